"""Make a rule script import the `cosmic` package of the checkout it belongs to.

Snakemake *appends* a script's folder to ``sys.path``, so an installed copy of `cosmic` (a
non-editable or shared install, or another checkout's editable install) would be imported first and
the jobs could run different code from the Snakefile that planned them. Every rule script imports
this module before anything from `cosmic`; it is not part of the package, so only this checkout's
copy can be found.
"""

import sys
from pathlib import Path



def _script_folder() -> str:
    """The folder of the rule script importing this module: Snakemake's preamble sets the script's
    ``__file__`` to its real path and defines ``snakemake``. Another checkout's editable install can
    put *its* copy of this module first on ``sys.path``, so this file's own folder is only the
    fallback (imported outside a Snakemake job)."""
    frame = sys._getframe(1)
    while frame is not None:
        names = frame.f_globals
        if "snakemake" in names and names.get("__file__"):
            return str(Path(names["__file__"]).resolve().parent)
        frame = frame.f_back
    return str(Path(__file__).resolve().parent)


SCRIPTS = _script_folder()

if sys.path[:1] != [SCRIPTS]:
    sys.path.insert(0, SCRIPTS)
_loaded = sys.modules.get("cosmic")
if _loaded is not None and not str(Path(_loaded.__file__).resolve()).startswith(SCRIPTS):
    for _name in [name for name in sys.modules if name == "cosmic" or name.startswith("cosmic.")]:
        del sys.modules[_name]
