"""The house's rules that code can check: stairs that run one way (minimal_lm imports neither room; train
and probes import minimal_lm, never each other, except the study, the one place that joins them), no
training-run machinery in minimal_lm, and importing the packages leaves matplotlib's backend alone."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
STUDY = {"probes/study.py", "probes/study_cmd.py"}
"""The one place that joins train and probes (README, Layout)."""


def _imports(path: Path) -> set[str]:
    """Top-level packages a module imports, anywhere in it (lazy imports inside functions count)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def _modules(package: str):
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package, forbidden", [("minimal_lm", {"train", "probes"}), ("train", {"probes"}),
                                                ("probes", {"train"})])
def test_stairs_run_one_way(package, forbidden):
    wrong = {str(p.relative_to(ROOT)): sorted(_imports(p) & forbidden) for p in _modules(package)}
    wrong = {k: v for k, v in wrong.items() if v and k not in STUDY}
    assert not wrong, f"imports against the stairs (only {', '.join(sorted(STUDY))} join train and probes): {wrong}"


def test_the_study_is_where_train_and_probes_meet():
    assert all("train" in _imports(ROOT / p) for p in STUDY)


def test_minimal_lm_holds_no_training_run_machinery():
    """Reading a run directory (minimal_lm.run_dir) restores params read-only; the CheckpointManager,
    saving, resuming and the run's logs are train.checkpoint's."""
    for path in _modules("minimal_lm"):
        text = path.read_text(encoding="utf-8")
        for name in ("CheckpointManager", "StandardSave", "JsonSave"):
            assert name not in text, f"{path.relative_to(ROOT)} mentions {name}"


def test_importing_the_packages_leaves_the_matplotlib_backend_alone():
    """A notebook's inline backend survives `import probes`: no module chooses a backend when imported
    (the CLIs choose Agg in their main)."""
    script = """
import importlib, pkgutil, matplotlib
changed = []
for pkg in ("minimal_lm", "train", "probes"):
    names = [pkg] + [m.name for m in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + ".")]
    for name in names:
        importlib.import_module(name)
        if matplotlib.rcParams["backend"] != "svg":
            changed.append(f"{name}: {matplotlib.rcParams['backend']}")
            matplotlib.rcParams["backend"] = "svg"
print(changed)
"""
    env = {**os.environ, "MPLBACKEND": "svg", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]", f"modules that set the backend: {proc.stdout}"
