"""The shipped configs: Python files whose `get_config()` (or `get_config(ROW)`) returns a
ConfigDict. They are data, loaded by path (`--config configs/NAME.py`, or `--config NAME.py`
from anywhere once jaxcls is installed: `jaxcls.cli.config_files.resolve`), never imported."""
