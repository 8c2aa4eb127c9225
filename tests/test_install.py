"""The package installs from a wheel: compiler/ as nldsl.compiler, grammar and the
library of specs as package data, and nothing as a top-level `compiler`."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_and_runs(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(ROOT)], check=True, capture_output=True)
    (wheel,) = wheels.glob("nldsl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "nldsl/grammar/nl.lark" in names and "nldsl/examples/optim/adamw.nl" in names
    assert not any(n.startswith("compiler/") for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import nldsl, sys; assert nldsl.__file__.startswith(sys.argv[1]), nldsl.__file__; "
            "from nldsl.compiler.driver import check; "
            "p = check(sys.argv[1] + '/nldsl/examples/hope.nl'); print(p.models[0].optimizers[0].optimizer.name)")
    r = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, capture_output=True, text=True,
                       env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "adamw"
