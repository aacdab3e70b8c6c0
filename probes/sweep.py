"""The sweep: one study (probes.study) per named setting, each a few overrides of one base study that vary one
driver of Q/K concentration (steps, width, depth, learning rate, RoPE theta, sequence length), and the studies'
statements (probes.statements) side by side in one table: where the effect begins.

A sweep directory holds one study directory per setting (<setting>/, with its report <setting>/index.html;
resumed as studies are: rerunning skips finished work), sweep.json (the settings and the table's values, per seed)
and sweep.md (the table). The table is rebuilt from the studies' saved records only (write_table): after each
setting, and by `python -m probes sweep --report-only`. The sweep drives studies through probes.study alone.
"""
from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path

from minimal_lm import ConfigError
from minimal_lm.files import read_json, write_atomic
from probes import emergence as em
from probes import statements
from probes.report import study_data
from probes.study import StudyConfig, diverged, load_object, override_study, run_study, settings_diff

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
RESULTS, TABLE = "sweep.json", "sweep.md"
NONE = "—"  # a cell without a value (not run, or no RoPE / NoPE pair)


@dataclass(frozen=True)
class SweepConfig:
    """A base study and named settings: name -> overrides (`key=value` as `python -m probes study` takes them:
    study.KEY, model., train., data.) applied to the base, each setting a study of its own. Every setting is
    built on construction, so a bad override fails before anything trains, naming the setting and the key."""

    study: StudyConfig
    settings: dict[str, tuple[str, ...]]

    def __post_init__(self):
        if not isinstance(self.study, StudyConfig):
            raise ConfigError(f"sweep.study: expected a StudyConfig, got {type(self.study).__name__}")
        if not isinstance(self.settings, dict) or not self.settings:
            raise ConfigError("sweep.settings: expected a non-empty dict of setting name -> list of overrides")
        settings = {}
        for name, overrides in self.settings.items():
            if not isinstance(name, str) or not NAME.match(name):
                raise ConfigError(f"setting {name!r}: expected a name of letters, digits, '_' and '-' (it names the "
                                  "setting's study directory)")
            if not isinstance(overrides, (list, tuple)) or not all(isinstance(o, str) for o in overrides):
                raise ConfigError(f"setting {name!r}: expected a list of 'key=value' strings, got {overrides!r}")
            settings[name] = tuple(overrides)
        object.__setattr__(self, "settings", settings)
        self.studies()

    def studies(self) -> dict[str, StudyConfig]:
        """Setting name -> its study: the base with the setting's overrides (a ConfigError names the setting)."""
        out = {}
        for name, overrides in self.settings.items():
            try:
                out[name] = override_study(self.study, overrides)
            except ConfigError as e:
                raise ConfigError(f"setting {name!r}: {e}") from None
        return out


def load_sweep(spec: str | Path, overrides: typing.Sequence[str] = ()) -> SweepConfig:
    """The SweepConfig `SWEEP` of the Python file `spec` (`path.py:NAME` picks another name); `overrides` change
    the base study (as for `python -m probes study`) before each setting's own overrides apply."""
    sweep = load_object(spec, SweepConfig, "SWEEP")
    if overrides:
        sweep = dataclasses.replace(sweep, study=override_study(sweep.study, overrides))
    return sweep


def select(sweep: SweepConfig, only: typing.Sequence[str] | None = None) -> list[str]:
    """The settings to run, in the config's order: all, or those named in `only`."""
    if not only:
        return list(sweep.settings)
    bad = [n for n in only if n not in sweep.settings]
    if bad:
        raise ConfigError(f"--only: no setting named {', '.join(map(repr, bad))}; the sweep's settings: "
                          f"{', '.join(sweep.settings)}")
    return [n for n in sweep.settings if n in only]


def run_sweep(sweep: SweepConfig, out, *, only: typing.Sequence[str] | None = None, command: str = "",
              progress: bool = True) -> tuple[Path, dict[str, str]]:
    """Run (or resume) the study of every selected setting in out/<setting>/, rebuilding the table after each;
    returns (sweep.md's path, setting -> message for those whose training diverged: the sweep goes on with the
    next setting). A setting whose directory holds a study of other settings is refused before anything trains."""
    out = Path(out)
    names, studies = select(sweep, only), sweep.studies()
    if out.is_dir() and any(out.iterdir()) and not (out / RESULTS).is_file():
        raise ConfigError(f"{out} is not empty and has no {RESULTS}, so it is not a sweep directory; use another --out")
    for name in names:
        _check_settings(name, studies[name], out / name)
    out.mkdir(parents=True, exist_ok=True)
    write_table(sweep, out, command=command)
    failed = {}
    for i, name in enumerate(names, 1):
        print(f"[setting {i}/{len(names)}] {name} ({_overrides_text(sweep.settings[name])}): {out / name}", flush=True)
        try:
            run_study(studies[name], out / name, command=f"{command}  # setting {name}" if command else "",
                      progress=progress)
        except Exception as e:
            if not diverged(e):
                raise
            failed[name] = str(e)
            print(f"setting {name}: training diverged ({e}); going on with the next setting", flush=True)
        write_table(sweep, out, command=command, failed=failed)
    return out / TABLE, failed


def _check_settings(name: str, study: StudyConfig, study_dir: Path) -> None:
    diff = settings_diff(study, study_dir)
    if diff:
        raise ConfigError(f"setting {name!r}: {study_dir} holds a study with other settings; differing keys: "
                          f"{'; '.join(diff)}. Use another --out")


def _overrides_text(overrides) -> str:
    return " ".join(overrides) if overrides else "the base"


# ---- the table --------------------------------------------------------------------------------------------


def write_table(sweep: SweepConfig, out, *, command: str | None = None, failed: dict | None = None) -> Path:
    """sweep.json and sweep.md of every setting of `sweep` from what out/<setting>/ holds (trains nothing);
    settings not run yet get a row that says so. `failed` (setting -> message) marks diverged settings, kept
    from the previous sweep.json until the setting finishes; `command` None keeps the previous one."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"{out}: no sweep directory; run `python -m probes sweep --config ... --out {out}`")
    old = read_json(out / RESULTS) if (out / RESULTS).is_file() else {}
    failed = {**{r["setting"]: r["diverged"] for r in old.get("rows", []) if r.get("diverged")}, **(failed or {})}
    rows = []
    for name, study in sweep.studies().items():
        _check_settings(name, study, out / name)
        rows.append(setting_row(name, sweep.settings[name], study, out / name, failed.get(name), lam=sweep.study.lam))
    record = {"base": _base_text(sweep.study), "lam": sweep.study.lam, "headers": headers(sweep.study.lam),
              "rows": rows, "command": old.get("command", "") if command is None else command}
    write_atomic(out / RESULTS, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    write_atomic(out / TABLE, markdown(record))
    return out / TABLE


def headers(lam: float) -> list[str]:
    return ["setting", "overrides", "tokens seen per run", "RoPE / NoPE Q max ratio", "K", "V",
            "RoPE K low-freq share, step 0 → end", f"first step a Q/K dim > λ={lam:g}", "status",
            "train wall s"]


def setting_row(name: str, overrides, study: StudyConfig, study_dir: Path, diverged_msg: str | None = None, *,
                lam: float | None = None) -> dict:
    """One setting's values, per seed (probes.statements over its study directory, as its report reads them), and
    their cells. rope_nope: site -> RoPE / NoPE ratio of the final largest max ratio over layers, paired by seed;
    rope_k_lowfreq: RoPE's K low-frequency share (mean over layers) at step 0 and at the end, per seed;
    first_crossing: scheme -> per trained seed the first step a Q/K dim crossed the study's lambda (None: none
    did); its cell names that lambda where it is not `lam`, the table's."""
    runs = len(study.runs())
    row = {"setting": name, "overrides": list(overrides), "dir": name, "finished_runs": 0, "runs": runs,
           "trained_runs": 0, "tokens": [], "rope_nope": {}, "rope_k_lowfreq": {"init": [], "final": []},
           "first_crossing": {}, "train_s": None, "diverged": None, "lam": study.lam}
    if (study_dir / "study.json").is_file():
        _, _, seed_data = study_data(study_dir)
        stats = {s: [statements.run_stats(d) for d in ds] for s, ds in seed_data.items()}
        trained = [x for xs in stats.values() for x in xs if x]
        rope = [x for x in stats.get("rope", []) if x]
        times = [d["timing"].get("train_s") for ds in seed_data.values() for d in ds if d]
        row.update(finished_runs=sum(x["step"] >= study.base.train.steps for x in trained), trained_runs=len(trained),
                   tokens=sorted({x["tokens"] for x in trained}), rope_nope=statements.rope_nope_ratios(seed_data),
                   rope_k_lowfreq={"init": [x["sites"]["k"]["low_init"] for x in rope],
                                   "final": [x["sites"]["k"]["low_final"] for x in rope]},
                   first_crossing={s: [statements.first_crossing(x) for x in xs if x] for s, xs in stats.items()},
                   train_s=sum(t for t in times if t) or None)
    if diverged_msg and row["finished_runs"] < runs:
        row["diverged"] = diverged_msg
    row["status"] = _status(row, study_dir)
    row["cells"] = cells(row, study.lam if lam is None else lam)
    return row


def _status(row, study_dir) -> str:
    if row["diverged"]:
        return "diverged: " + row["diverged"].splitlines()[0]
    if row["finished_runs"] == row["runs"]:
        return "done"
    if not (study_dir / "study.json").is_file():
        return "not run"
    return f"{row['finished_runs']}/{row['runs']} runs finished"


def cells(row: dict, lam: float) -> list[str]:
    """The row's cells under headers(): ratios and shares as probes.statements.spread writes them (mean [min, max]
    over seeds; one value with one seed)."""
    tokens = row["tokens"]
    low = row["rope_k_lowfreq"]
    firsts = row["first_crossing"]
    if not any(firsts.values()):
        first = NONE
    elif all(f is None for fs in firsts.values() for f in fs):
        first = "none"
    else:
        first = ", ".join(f"{em.label(s)} {statements.first_text(fs, none='none')}" for s, fs in firsts.items() if fs)
    if first != NONE and row["lam"] != lam:
        first += f" (λ={row['lam']:g})"
    ratio = lambda site: statements.spread(row["rope_nope"].get(site, [])) or NONE  # noqa: E731
    return [row["setting"], _overrides_text(row["overrides"]),
            NONE if not tokens else f"{tokens[0]:,}" if len(tokens) == 1 else f"{tokens[0]:,} to {tokens[-1]:,}",
            ratio("q"), ratio("k"), ratio("v"),
            f"{statements.spread(low['init'])} → {statements.spread(low['final'])}" if low["init"] else NONE,
            first, row["status"], NONE if row["train_s"] is None else f"{row['train_s']:.0f}"]


def _base_text(study: StudyConfig) -> str:
    m, t = study.base.model, study.base.train
    return (f"{m.num_layers} layers, d_model {m.d_model}, {m.num_heads} heads of {m.dim_per_head}, rope_theta "
            f"{m.rope_theta:g}; data {study.base.data.kind}; {t.steps} steps of {t.batch_size} x {t.seq_len} tokens, "
            f"lr {t.lr:g}; schemes {', '.join(map(em.label, study.schemes))}; seeds "
            f"{', '.join(map(str, study.seeds))}; probed every {study.probe_every} steps on {study.probe_rows} rows")


def markdown(record: dict) -> str:
    esc = lambda x: str(x).replace("|", "\\|")  # noqa: E731
    lines = ["# Sweep: where Q/K concentration begins", "", f"Base study: {record['base']}. Each setting is the base "
             "with its overrides, a study of its own in `<setting>/` (its report: `<setting>/index.html`).", "",
             "| " + " | ".join(map(esc, record["headers"])) + " |", "|" + "---|" * len(record["headers"])]
    lines += ["| " + " | ".join(map(esc, r["cells"])) + " |" for r in record["rows"]]
    lines += ["", "- RoPE / NoPE: the largest max ratio over layers (a dim's norm over its head's mean) at the last "
              "step, RoPE's (Q and K after rotation) over NoPE's, paired by seed: mean [min, max] over seeds, one "
              "value with one seed. Above 1: RoPE concentrates more. V is never rotated: a V ratio near Q's and K's "
              "says the difference is one of scale, not Q/K-specific.",
              "- Low-frequency share: of RoPE's K top-1 mass per head after rotation, in the slowest quarter of the "
              "rotated pairs (mean over layers); the step-0 value is the rotation's own bias, so read the end "
              "against it.",
              f"- First step: the first probed step at which a dim of any layer of Q or K (before or after "
              f"rotation) exceeded λ = {record['lam']:g} x its head mean, per scheme (per seed, `;` between them).",
              "- Train wall s: the studies' timing.json, summed over their runs (training with probes, compile "
              "included; resumed work adds up)."]
    if record.get("command"):
        lines += ["", "```", record["command"], "```"]
    return "\n".join(lines) + "\n"
