"""Started processes install the test network guard (``tests/net_guard.py``) when its variables are set."""

import os

if os.environ.get("PT2I_TEST_NET_GUARD_LOG"):
    import importlib.util
    from pathlib import Path

    _path = Path(__file__).resolve().parents[1] / "net_guard.py"
    _spec = importlib.util.spec_from_file_location("_pt2i_net_guard", _path)
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    _mod.install_from_env()
