"""Pre-sweep stages (Pool -> Pool) and post-sweep stages (Selection -> Selection + files), looked
up by name from the config's `stages` (`base`). The built-in ones register themselves here:
`phylo` (pre-sweep, lensray.stages.phylo.stage), `route` (post-sweep, lensray.stages.route.stage)
and `aggregate` (post-sweep, lensray.stages.aggregate.stage).
"""

from lensray.stages.phylo import stage as _phylo  # noqa: F401  (registers the `phylo` stage)
from lensray.stages.route import stage as _route  # noqa: F401  (registers the `route` stage)
from lensray.stages.aggregate import stage as _aggregate  # noqa: F401  (registers the `aggregate` stage)
