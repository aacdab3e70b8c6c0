"""The study: one model per positional scheme and seed, trained with the same data order and init seed
(only model.position differs between the schemes of one seed; a seed sets train.seed and data.seed), probed
while it trains, disrupted at the end, then reported (probes.report).

A study directory holds study.json (the resolved settings), probe_batch.npz (the fixed probe batch),
items.jsonl (held-out synthetic items of the disruption experiment), on a text corpus class_batch.npz and
bigram_counts.npz (the held-out rows of the token-class measure and the bigram counts of the train split),
one run directory per scheme and seed (<scheme> for the first seed of study.seeds, <scheme>_seed<k> for the
others; every seed probes the same batches) and index.html. Each run directory adds probes/ (a record per
probed step; step 0 from the initial params), disruption.jsonl (accuracy per mode and kind during
training), token_classes.jsonl (loss and top-1 accuracy of contextual / parametric / other held-out tokens
per disruption mode, probes.token_classes) and disruption/step_<N>/ (the experiment on the final model).
Rerunning skips finished work: training resumes from its last checkpoint, probe records and log lines past
it are dropped, and a final experiment is done when its index.html exists.

The study sits above both rooms: it drives train.loop with probes as hooks.
"""
from __future__ import annotations

import dataclasses
import json
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from minimal_lm import SCHEMES, ConfigError, Tokenizer, from_pretrained, init_params
from minimal_lm.batching import left_pad
from minimal_lm.files import atomic_file, write_atomic
from minimal_lm.run_dir import checkpoint_steps, load_run
from probes.disrupt import SELECT
from probes.emergence import CLASS_LOG, DISRUPTION_LOG, accuracy_by_kind, read_class_log, run_name
from probes.experiment import evaluate, modes_for
from probes.records import TrainingProbe, drop_after, record_dir
from train.checkpoint import LOCK, append_log, truncate_log
from train.config import RunConfig, apply_overrides, config_diff, load_python

PROBE_SOURCES = ("items", "heldout")
DISRUPT_TASKS = ("synthetic", "paper", "none")
SETTINGS_FREE = {"study.schemes", "study.seeds", "study.heatmap_steps", "study.heatmap_layers"}
"""Study keys that may change between runs into the same directory (they add schemes or seeds, or redraw;
a changed first seed is refused by its run directories' configs)."""
PROBE_STREAM, CLASS_STREAM = 1 << 16, (1 << 16) + 1  # held-out batch indices of the probe and class batches


@dataclass(frozen=True)
class StudyConfig:
    """What a study trains, probes and disrupts. `base` is the RunConfig every scheme shares."""

    base: RunConfig
    schemes: tuple[str, ...] = ("rope", "none", "alibi", "learned")
    probe_every: int = 10  # becomes train.eval_every: probes (and eval loss) every this many steps
    probe_source: str = "items"  # items: held-out synthetic prompts; heldout: rows of the held-out corpus
    probe_rows: int = 16
    probe_len: int = 256  # tokens per heldout row
    lam: float = 5.0  # massive: M > lam * head mean
    top_k: int = 1  # top-k dims per head for the low-frequency share
    heatmap_steps: tuple[int, ...] = ()  # Figure-2 heatmaps; (): step 0 and the last; others snap to probed steps
    heatmap_layers: tuple[int, ...] = ()  # (): every layer up to 4, else first, middle, last
    disrupt_tasks: str = "synthetic"  # synthetic: held-out corpus items; paper: passkey + Yes/No facts; none
    disrupt_n: int = 16  # items per kind
    disrupt_every: int = 0  # also during training, every this many steps (a multiple of probe_every; 0: off)
    disrupt_modes: tuple[str, ...] = ("none", "massive", "non_massive")
    disrupt_top_k: int = 1
    disrupt_max_new_tokens: int = 8
    disrupt_batch_size: int = 16
    disrupt_perplexity: bool = False
    seed: int = 0  # held-out items and probe prompts
    seeds: tuple[int, ...] = (0,)  # one run per scheme and seed, with train.seed = data.seed = the seed
    class_rows: int = 16  # token classes on a text corpus: held-out rows (0: off; the synthetic corpus has none)
    class_len: int = 256  # tokens per token-class row
    class_min_count: int = 10  # parametric: the bigram occurs at least this often in the train split
    class_count_tokens: int = 0  # bigram counts from the first this many train tokens (0: all)

    def __post_init__(self):
        if not isinstance(self.base, RunConfig):
            raise ConfigError(f"study.base: expected a RunConfig, got {type(self.base).__name__}")
        for name in ("schemes", "heatmap_steps", "heatmap_layers", "disrupt_modes", "seeds"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        bad = [s for s in self.schemes if s not in SCHEMES]
        if bad or not self.schemes or len(set(self.schemes)) != len(self.schemes):
            raise ConfigError(f"study.schemes={','.join(map(str, self.schemes))!r}: expected distinct names "
                              f"from {', '.join(SCHEMES)}")
        for name in ("probe_every", "probe_rows", "probe_len", "top_k", "disrupt_n", "disrupt_top_k",
                     "disrupt_max_new_tokens", "disrupt_batch_size"):
            _check(name, getattr(self, name), lambda v: v > 0, "a positive integer")
        for name in ("disrupt_every", "seed", "class_rows", "class_count_tokens"):
            _check(name, getattr(self, name), lambda v: v >= 0, "an integer >= 0")
        _check("class_len", self.class_len, lambda v: v >= 2, "an integer >= 2")
        _check("class_min_count", self.class_min_count, lambda v: v > 0, "a positive integer")
        if (not self.seeds or len(set(self.seeds)) != len(self.seeds)
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds)):
            raise ConfigError(f"study.seeds={','.join(map(str, self.seeds))!r}: expected distinct integers >= 0")
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not self.lam > 0:
            raise ConfigError(f"study.lam={self.lam!r}: expected a positive number")
        if self.probe_source not in PROBE_SOURCES:
            raise ConfigError(f"study.probe_source={self.probe_source!r}: expected one of {', '.join(PROBE_SOURCES)}")
        if self.disrupt_tasks not in DISRUPT_TASKS:
            raise ConfigError(f"study.disrupt_tasks={self.disrupt_tasks!r}: expected one of {', '.join(DISRUPT_TASKS)}")
        synthetic = self.base.data.kind == "synthetic"
        for name, fix in (("probe_source", "study.probe_source=heldout (rows of the held-out corpus)"),
                          ("disrupt_tasks", "study.disrupt_tasks=none (on a text corpus the token classes, "
                                            "study.class_rows, are the disruption measure) or paper")):
            if getattr(self, name) in ("items", "synthetic") and not synthetic:
                raise ConfigError(f"study.{name}={getattr(self, name)!r} needs data.kind='synthetic' (the items come "
                                  f"from the synthetic corpus and its tokenizer), got data.kind="
                                  f"{self.base.data.kind!r}: set {fix}")
        if self.disrupt_every % self.probe_every:
            raise ConfigError(f"study.disrupt_every={self.disrupt_every}: expected a multiple of "
                              f"study.probe_every={self.probe_every} (disruption runs at probe steps)")
        m = self.base.model
        if self.probe_source == "heldout" and self.probe_len > m.max_seq_len:
            raise ConfigError(f"study.probe_len={self.probe_len} exceeds model.max_seq_len={m.max_seq_len}")
        if self.token_classes and self.class_len > m.max_seq_len:
            raise ConfigError(f"study.class_len={self.class_len} exceeds model.max_seq_len={m.max_seq_len}")
        for name in ("top_k", "disrupt_top_k"):
            if getattr(self, name) > m.dim_per_head:
                raise ConfigError(f"study.{name}={getattr(self, name)}: expected at most head_dim={m.dim_per_head}")
        bad = [i for i in self.heatmap_layers if not 0 <= i < m.num_layers]
        if bad:
            raise ConfigError(f"study.heatmap_layers: layer(s) {bad} out of range 0..{m.num_layers - 1}")
        if any(s < 0 for s in self.heatmap_steps):
            raise ConfigError(f"study.heatmap_steps={self.heatmap_steps}: expected steps >= 0")
        if self.disrupt_tasks != "none" or self.token_classes:
            if bad := [x for x in self.disrupt_modes if x != "none" and x not in SELECT]:
                raise ConfigError(f"study.disrupt_modes: {bad} not allowed; expected some of none, {', '.join(SELECT)}")
            modes_for(self.disrupt_modes, top_k=self.disrupt_top_k)

    @property
    def token_classes(self) -> bool:
        """Whether the token-class measure runs: on a text corpus (shards, stdlib) with class_rows > 0."""
        return self.class_rows > 0 and self.base.data.kind != "synthetic"

    def runs(self) -> list[tuple[str, int, str]]:
        """(scheme, seed, run directory name) of every run, all seeds of a scheme together."""
        return [(s, seed, run_name(s, seed, self.seeds)) for s in self.schemes for seed in self.seeds]

    def scheme_config(self, scheme: str, seed: int | None = None) -> RunConfig:
        """The base config with this scheme, the probe cadence and the seed (default: the first of
        study.seeds) as train.seed and data.seed."""
        seed = self.seeds[0] if seed is None else seed
        return dataclasses.replace(self.base, model=self.base.model.replace(position=scheme),
                                   train=dataclasses.replace(self.base.train, eval_every=self.probe_every, seed=seed),
                                   data=dataclasses.replace(self.base.data, seed=seed))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "base"}
        return {"study": {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}, **self.base.to_dict()}


SECTIONS = {"study": "", "model": "base.model", "train": "base.train", "data": "base.data"}
"""Where override keys go: `study.KEY` sets a StudyConfig field, `model.`, `train.`, `data.` the base run config."""


def load_study(spec: str | Path, overrides: typing.Sequence[str] = ()) -> StudyConfig:
    """The StudyConfig `STUDY` of the Python file `spec` (`path.py:NAME` picks another name), with overrides:
    `study.key=value` sets a study field (a list comma-separated), `model.`, `train.`, `data.` keys the base
    RunConfig. The loader and the parser are train.config's, as for a run."""
    return override_study(load_python(spec, StudyConfig, "STUDY"), overrides)


def override_study(study: StudyConfig, overrides: typing.Sequence[str]) -> StudyConfig:
    """`study` with dotted `key=value` overrides, as load_study applies them (probes.sweep: one setting each)."""
    return apply_overrides(study, overrides, sections=SECTIONS)


def load_object(spec: str | Path, cls: type, name: str):
    """The module-level `name`, a `cls`, of the Python file `spec` (`path.py:NAME` picks another name): the loader
    of load_study, for configs of other kinds built on studies (probes.sweep's SWEEP)."""
    return load_python(spec, cls, name)


def diverged(error: BaseException) -> bool:
    """Whether `error` is training's non-finite loss (train.loop.NonFiniteLoss), for callers of run_study that
    keep out of train (probes.sweep goes on with its next setting)."""
    from train.loop import NonFiniteLoss

    return isinstance(error, NonFiniteLoss)


def _check(name, value, ok, expected):
    if isinstance(value, bool) or not isinstance(value, int) or not ok(value):
        raise ConfigError(f"study.{name}={value!r}: expected {expected}")


# ---- running ------------------------------------------------------------------------------------------


def run_study(study: StudyConfig, out, *, command: str = "", progress: bool = True, report: bool = True) -> Path:
    """Train, probe and disrupt every scheme into `out`, then write the report (unless `report` is False);
    returns index.html's path. Holds the writer lock of `out` throughout, and of each scheme's run
    directory while it works there (train.checkpoint.RunDirBusy at once if another process holds one:
    a second study, or a `python -m train` on a scheme's directory)."""
    from probes.report import write_report
    from train.checkpoint import hold

    out = Path(out)
    with hold(out):
        _write_settings(study, out, command)
        batch = probe_batch(study, out)
        runs = disruption_runs(study, out)
        classes = class_probe(study, out)
        todo = study.runs()
        for i, (scheme, seed, name) in enumerate(todo, 1):
            seed_text = f" seed {seed}" if len(study.seeds) > 1 else ""
            print(f"[{i}/{len(todo)}] {scheme}{seed_text}: {out / name}", flush=True)
            cfg = study.scheme_config(scheme, seed)
            with hold(out / name):  # train.loop.run takes it again inside: re-entrant
                t0 = time.perf_counter()
                train_scheme(study, cfg, out / name, batch, runs, command=command, classes=classes)
                t1 = time.perf_counter()
                final_disruption(out / name, runs, command=command, progress=progress)
                _add_timing(out / name, train_s=t1 - t0, final_s=time.perf_counter() - t1)
        return write_report(out) if report else out / "index.html"


def settings_diff(study: StudyConfig, out) -> list[str]:
    """The keys (as 'key: old -> new') in which the study saved in out/study.json differs from `study`, ignoring
    those a resumed study may change (SETTINGS_FREE, train.config.CONTROL_KEYS); [] when there is none saved."""
    from train.config import CONTROL_KEYS

    path, new = Path(out) / "study.json", study.to_dict()
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); use another --out") from None
    return config_diff({k: old.get(k) for k in new}, new, ignore=CONTROL_KEYS | SETTINGS_FREE, defaults=_defaults())


def _write_settings(study: StudyConfig, out: Path, command: str) -> None:
    """study.json; a directory holding a study of other settings is refused, naming the keys."""
    path, new = out / "study.json", study.to_dict()
    if path.is_file():
        diff = settings_diff(study, out)
        if diff:
            raise ConfigError(f"{out} holds a study with other settings; differing keys: {'; '.join(diff)}. "
                              f"Use another --out")
    elif any(p.name != LOCK for p in out.iterdir()):
        raise ConfigError(f"{out} is not empty and has no study.json, so it is not a study directory; "
                          f"use another --out")
    extra = {"command": command, "unigram_entropy": _entropy(study)}
    write_atomic(path, json.dumps({**new, **extra}, indent=1) + "\n")


def _defaults() -> dict:
    """study.json of the default settings, for keys that a study written before they existed lacks: such a
    study ran with the default."""
    study = {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
             for f in dataclasses.fields(StudyConfig) if f.default is not dataclasses.MISSING}
    return {"study": study, **RunConfig().to_dict()}


def _entropy(study):
    if study.base.data.kind != "synthetic":
        return None
    from train.synthetic import unigram_entropy

    return unigram_entropy(study.base.data, study.base.train.seq_len + 1, rows=64)


def probe_batch(study: StudyConfig, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """(tokens_BT, mask_BT) probed at every step of every scheme, saved once in probe_batch.npz."""
    path = out / "probe_batch.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return z["tokens"], z["mask"]
    if study.probe_source == "items":
        from train.synthetic import encode, eval_items

        n = study.probe_rows
        items = (eval_items("contextual", (n + 1) // 2, study.seed + 1, study.base.data)
                 + eval_items("parametric", n // 2, study.seed + 1, study.base.data))
        rows = [encode(it["prompt"] + it["answer"]) for it in items]
        T = max(len(r) for r in rows)
        if T > study.base.model.max_seq_len:
            raise ConfigError(f"probe items have up to {T} tokens: more than model.max_seq_len="
                              f"{study.base.model.max_seq_len}")
        tokens, mask = left_pad(rows, cap=study.base.model.max_seq_len)
    else:
        from train.data import make_source

        tokens = make_source(study.base.data).eval_batch(PROBE_STREAM, study.probe_rows, study.probe_len)[:, 1:]
        mask = np.ones(tokens.shape, bool)
    with atomic_file(path) as f:
        np.savez(f, tokens=tokens.astype(np.int32), mask=mask)
    return tokens, mask


@dataclass(frozen=True)
class ClassProbe:
    """What the token-class measure needs: the fixed held-out rows, the train split's bigram counts, the
    corpus's end-of-document id (None: each row is one document) and the modes (name -> intervention)."""

    tokens_BT: np.ndarray
    counts: typing.Any  # probes.token_classes.BigramCounts
    eos_id: int | None
    modes: dict


def class_probe(study: StudyConfig, out: Path) -> ClassProbe | None:
    """The token-class measure's inputs (None when study.token_classes is off): class_rows held-out windows of
    class_len tokens (class_batch.npz; they may span files, whose <|endoftext|> separators are kept and end a
    document for the classes) and the bigram counts of the train split (bigram_counts.npz), each computed once
    for all schemes and seeds, from the base data seed."""
    if not study.token_classes:
        return None
    from probes.token_classes import BigramCounts, bigram_counts
    from train.data import make_source

    source = None
    path, cpath = out / "class_batch.npz", out / "bigram_counts.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            tokens, eos = z["tokens"], int(z["eos_id"])
    else:
        source = make_source(study.base.data)
        tokens = source.eval_batch(CLASS_STREAM, study.class_rows, study.class_len - 1).astype(np.int32)
        eos = source.train.meta.get("eos_id")
        eos = -1 if eos is None else int(eos)
        with atomic_file(path) as f:
            np.savez(f, tokens=tokens, eos_id=np.int64(eos))
    if cpath.is_file():
        counts = BigramCounts.load(cpath)
    else:
        source = source or make_source(study.base.data)
        counts = bigram_counts(_first_tokens(source.train.arrays, study.class_count_tokens), source.vocab_size)
        with atomic_file(cpath) as f:
            np.savez(f, codes=counts.codes, counts=counts.counts, vocab_size=counts.vocab_size)
    modes = modes_for(study.disrupt_modes, top_k=study.disrupt_top_k)
    return ClassProbe(tokens, counts, None if eos < 0 else eos, modes)


def _first_tokens(arrays, cap: int):
    """The shards' arrays cut to their first `cap` tokens in all (0: all of them)."""
    left = cap or None
    for a in arrays:
        if left is not None:
            if left <= 0:
                return
            a, left = a[:left], left - len(a[:left])
        yield a


def disruption_runs(study: StudyConfig, out: Path) -> list[dict]:
    """Settings of probes.experiment for the disruption experiment (empty when disrupt_tasks is none)."""
    common = {"n": study.disrupt_n, "modes": list(study.disrupt_modes), "top_k": study.disrupt_top_k,
              "max_new_tokens": study.disrupt_max_new_tokens, "batch_size": study.disrupt_batch_size,
              "perplexity": study.disrupt_perplexity, "seed": study.seed}
    if study.disrupt_tasks == "none":
        return []
    if study.disrupt_tasks == "paper":
        budget = min(128, study.base.model.max_seq_len - study.disrupt_max_new_tokens)
        return [{**common, "task": "passkey", "max_tokens": budget, "digits": 6},
                {**common, "task": "facts", "max_new_tokens": min(4, study.disrupt_max_new_tokens)}]
    from train.synthetic import write_items

    path = out / "items.jsonl"
    if not path.is_file():
        write_items(path, study.disrupt_n, study.seed, study.base.data)
    return [{**common, "task": "jsonl", "task_file": str(path), "label": "synthetic", "n": 2 * study.disrupt_n}]


def train_scheme(study: StudyConfig, cfg: RunConfig, run_dir: Path, batch, runs: list[dict], *,
                 command: str = "", classes: ClassProbe | None = None) -> None:
    """Train one scheme (resuming) with a probe record at step 0 (the initial params) and at every
    evaluation, the disruption experiment every study.disrupt_every steps, and the full experiment
    (disruption/step_<N>/) at the last step, on the live params so that its programs are compiled once;
    with `classes`, the token-class measure (token_classes.jsonl) at step 0, every study.disrupt_every steps
    and at the last step."""
    from train.checkpoint import open_run_dir
    from train.loop import run

    tc = cfg.train
    stop, per_step = min(tc.stop_after or tc.steps, tc.steps), tc.batch_size * tc.seq_len
    done = _last_checkpoint(run_dir)
    if done >= stop:  # training would not run to vet it: a damaged last checkpoint is set aside here
        done = _newest_restorable(run_dir, cfg)
    drop_after(run_dir, done)
    truncate_log(run_dir / DISRUPTION_LOG, done)
    truncate_log(run_dir / CLASS_LOG, done)
    probe = TrainingProbe(cfg.model, *batch, lam=study.lam, k=study.top_k)
    tokenizer = []

    def token_classes(step, params):
        if classes is None or not (step in (0, stop) or (study.disrupt_every and step % study.disrupt_every == 0)):
            return {}
        from probes.token_classes import class_metrics

        t0 = time.perf_counter()
        metrics = class_metrics(params, cfg.model, classes.tokens_BT, classes.counts, classes.modes,
                                eos_id=classes.eos_id, min_count=study.class_min_count,
                                batch_size=min(len(classes.tokens_BT), study.disrupt_batch_size))
        append_log(run_dir / CLASS_LOG, {"step": step, "tokens_seen": step * per_step, "classes": metrics})
        return {"classes_s": time.perf_counter() - t0}

    def disrupt(step, params):
        if not runs or not (step == stop or (study.disrupt_every and step % study.disrupt_every == 0)):
            return {}
        tokenizer[:] = tokenizer or [Tokenizer.from_file(run_dir / "tokenizer.json")]
        t0 = time.perf_counter()
        if step == stop:
            result = _final(run_dir, step, params, cfg.model, tokenizer[0], runs, command, progress=False)
        else:
            result = {"runs": [evaluate(params, cfg.model, tokenizer[0], {**r, "perplexity": False}, progress=False)[0]
                               for r in runs]}
        _log(run_dir, step, step * per_step, accuracy_by_kind(result))
        return {"disrupt_s": time.perf_counter() - t0}

    def measure(step, params):
        t0 = time.perf_counter()
        probe(run_dir, params, step, step * per_step)
        return {"probe_s": time.perf_counter() - t0, **disrupt(step, params), **token_classes(step, params)}

    def step0(like=None):
        if (record_dir(run_dir) / "step_00000000.npz").is_file():
            return
        params = init_params(cfg.model, jax.random.key(tc.seed))  # as train.step does; eager ops serve all schemes
        if like is not None:  # placed like the live params, so the probe programs are shared
            params = jax.device_put(params, jax.tree.map(lambda a: a.sharding, like))
        measure(0, params)

    def hook(step, params):
        step0(params)
        return measure(step, params)

    if done < stop:
        open_run_dir(run_dir, cfg)
        run(cfg, run_dir, hooks=(hook,))
    step0()
    last = _last_checkpoint(run_dir)
    if not (record_dir(run_dir) / f"step_{last:08d}.npz").is_file():
        measure(last, load_run(run_dir, step=last)[1])
    elif classes is not None and last not in {x["step"] for x in read_class_log(run_dir)}:
        token_classes(last, load_run(run_dir, step=last)[1])  # e.g. a study of before the measure, resumed


def _last_checkpoint(run_dir: Path) -> int:
    steps = checkpoint_steps(run_dir) if (run_dir / "checkpoints").is_dir() else []
    return steps[-1] if steps else 0


def _newest_restorable(run_dir: Path, cfg: RunConfig) -> int:
    """Step of the newest checkpoint that restores and matches its checksums; newer damaged ones are moved
    to corrupt_checkpoints/ with a warning (train.checkpoint.resume), so the run is retrained from there."""
    from train.checkpoint import resume
    from train.step import init_state

    return resume(run_dir, jax.eval_shape(lambda: init_state(cfg.model, cfg.train)))[0]


def _log(run_dir: Path, step: int, tokens_seen: int, acc: dict) -> None:
    line = {"step": step, "tokens_seen": tokens_seen,
            "accuracy": {m: {k: v["accuracy"] for k, v in kinds.items()} for m, kinds in acc.items()},
            "n": {k: v["n"] for k, v in next(iter(acc.values())).items()}}
    append_log(run_dir / DISRUPTION_LOG, line)


def final_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "disruption" / f"step_{step:08d}"


def _final(run_dir, step, params, cfg, tokenizer, runs, command, progress) -> dict:
    from probes.disrupt_cmd import run_all

    return run_all(params, cfg, tokenizer, runs, final_dir(run_dir, step), source=f"{run_dir} (step {step})",
                   command=command, progress=progress)


def final_disruption(run_dir: Path, runs: list[dict], *, command: str = "", progress: bool = True) -> Path | None:
    """The disruption experiment on the run's last checkpoint, unless its index.html exists (training
    normally writes it at the last step). Returns its directory (None without tasks)."""
    if not runs:
        return None
    step = _last_checkpoint(run_dir)
    if not (final_dir(run_dir, step) / "index.html").is_file():
        _final(run_dir, step, *from_pretrained(run_dir), runs, command, progress)
    return final_dir(run_dir, step)


def _add_timing(run_dir: Path, **seconds) -> None:
    """Accumulate wall seconds per phase in run_dir/timing.json (resumed work adds to it)."""
    path = run_dir / "timing.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    write_atomic(path, json.dumps({k: old.get(k, 0.0) + v for k, v in seconds.items()}, indent=1) + "\n")
