"""The component packages never import Ray (docs/architecture.md#two-kinds-of-code), checked in
a fresh interpreter."""

import subprocess
import sys

import pytest

RAY_FREE = ["madis.motion", "madis.data", "madis.tokenizer", "madis.mdlm", "madis.metrics", "madis.viz",
            "madis.utils"]


@pytest.mark.parametrize("package", RAY_FREE)
def test_component_imports_no_ray(package):
    code = (
        "import importlib, pkgutil, sys\n"
        f"pkg = importlib.import_module({package!r})\n"
        "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n == 'ray' or n.startswith('ray.'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{package} pulls in Ray modules: {out.stdout.strip()[:200]}"
