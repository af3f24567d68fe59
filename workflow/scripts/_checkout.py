"""Make a rule script import the `cosmic` package of the checkout it belongs to.

Snakemake *appends* a script's folder to ``sys.path``, so an installed copy of `cosmic` (a
non-editable or shared install, or another checkout's editable install) would be imported first and
the jobs could run different code from the Snakefile that planned them. Every rule script imports
this module before anything from `cosmic`; it is not part of the package, so only this checkout's
copy can be found.
"""

import sys
from pathlib import Path

SCRIPTS = str(Path(__file__).resolve().parent)

if sys.path[:1] != [SCRIPTS]:
    sys.path.insert(0, SCRIPTS)
_loaded = sys.modules.get("cosmic")
if _loaded is not None and not str(Path(_loaded.__file__).resolve()).startswith(SCRIPTS):
    for _name in [name for name in sys.modules if name == "cosmic" or name.startswith("cosmic.")]:
        del sys.modules[_name]
