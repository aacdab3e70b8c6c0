"""Emergence in published training checkpoints (e.g. Pythia's hub revisions step0 ... step143000): each
checkpoint is probed in turn on the same prompts, one record per training step, exactly as a from-scratch
study records its steps (probes.records), and reported the same way (probes.report.emergence_section
and emergence_paragraphs): max ratio and low-frequency share per layer and site against step, Figure-2
heatmaps at chosen steps, attention sinks (probes.sinks) beside them, step 0 as the baseline.

A checkpoint is named by a spec: a local Hugging Face directory, one of our run directories (every saved
checkpoint, each at its own step), or a hub id at a revision, `ID@REVISION`. The step is parsed from the
revision or directory name (`step1000`, `step_1000`, `checkpoint-1000`) or given as `STEP=SPEC` (for a run
directory: the checkpoint saved at STEP).

A checkpoints directory holds checkpoints.json (settings, the model config, the source of each recorded
step), prompts.json (the prompts and their token ids, fixed by the first run), probes/step_<N>.npz,
figures/ and index.html. Rerunning skips the steps already recorded (nothing is loaded or downloaded for
them) and refuses other settings or another source for a recorded step; adding checkpoints extends the series.
"""
from __future__ import annotations

import gc
import json
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import jax

from minimal_lm import ModelConfig, Tokenizer, from_pretrained
from minimal_lm import run_dir as runs
from minimal_lm.files import write_atomic
from probes import emergence as em
from probes import prompts as prompt_lib
from probes.html import Section, Table, write_index
from probes.massive import PROBE_SITES, frequency_map, norm_matrices
from probes.records import make_record, read_records, record_dir, write_record
from probes.report import emergence_paragraphs, emergence_section, sinks_section
from probes.sinks import first_token_mass

SETTINGS = "checkpoints.json"
PROMPTS = "prompts.json"
FIXED = ("lam", "top_k", "max_len", "dtype", "tokens_per_step")
"""Settings every step of one directory shares (the records would not be comparable otherwise)."""
EXECUTION_ONLY = ("dtype", "param_dtype", "remat", "scan_layers", "attention_impl")
"""ModelConfig fields that may differ between checkpoints of one series (they do not change the model)."""
_STEP = re.compile(r"(?:step|checkpoint)[-_]?(\d+)$", re.IGNORECASE)
_EXPLICIT = re.compile(r"^(\d+)=(.+)$")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    spec: str  # as given
    path: str  # local directory or hub id
    revision: str | None = None  # hub only
    run_step: int | None = None  # run directories: the saved checkpoint to restore

    @property
    def source(self) -> str:
        """Where the weights come from, comparable between runs: id@revision, or an absolute path."""
        if self.revision is not None or not os.path.exists(self.path):
            return f"{self.path}@{self.revision or 'main'}"
        where = os.path.abspath(self.path)
        return where if self.run_step is None else f"{where} (checkpoint {self.run_step})"


def parse_checkpoints(specs) -> list[Checkpoint]:
    """Checkpoints of the specs (strings, or Checkpoint values as they are), by step; a step given twice is
    refused, naming both specs."""
    out: dict[int, Checkpoint] = {}
    for spec in specs:
        for c in [spec] if isinstance(spec, Checkpoint) else parse_checkpoint(spec):
            if c.step in out and out[c.step].source != c.source:
                raise ValueError(f"step {c.step} is given twice: {out[c.step].spec!r} and {c.spec!r}")
            out[c.step] = c
    if not out:
        raise ValueError("no checkpoints given")
    return [out[s] for s in sorted(out)]


def parse_checkpoint(spec: str) -> list[Checkpoint]:
    """One spec: [STEP=]DIR, [STEP=]RUN_DIR or [STEP=]ID@REVISION (see the module docstring)."""
    spec = str(spec)
    m = _EXPLICIT.match(spec)
    step, target = (int(m.group(1)), m.group(2)) if m else (None, spec)
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise ValueError(f"checkpoint {spec!r}: {target} is a file, expected a checkpoint directory")
        if runs.is_run_dir(target):
            saved = runs.checkpoint_steps(target)
            if step is not None and step not in saved:
                raise ValueError(f"checkpoint {spec!r}: the run {target} has no checkpoint at step {step}; "
                                 f"saved: {saved}")
            if not saved:
                raise ValueError(f"checkpoint {spec!r}: the run {target} has no saved checkpoint")
            return [Checkpoint(s, spec, target, run_step=s) for s in ([step] if step is not None else saved)]
        return [Checkpoint(_step(spec, step, Path(os.path.abspath(target)).name), spec, target)]
    repo, at, revision = target.rpartition("@")
    if not at:
        repo, revision = target, None
    if not _HUB_ID.fullmatch(repo) or (at and not revision):
        raise ValueError(f"checkpoint {spec!r}: no such directory, and not a hub id ORG/NAME[@REVISION]")
    return [Checkpoint(_step(spec, step, revision or ""), spec, repo, revision)]


def _step(spec: str, step: int | None, name: str) -> int:
    if step is not None:
        return step
    m = _STEP.search(name)
    if not m:
        raise ValueError(f"checkpoint {spec!r}: cannot tell its training step from {name!r} (expected a name "
                         f"ending in step<N>, step_<N> or checkpoint-<N>); give it as STEP={spec}")
    return int(m.group(1))


def load(c: Checkpoint, dtype=None, strict: bool = False):
    """(config, params, tokenizer) of one checkpoint; `strict` refuses HF config keys we do not read."""
    if c.run_step is not None:
        cfg, params, tokenizer_json = runs.load_run(c.path, dtype=dtype, step=c.run_step)
        return cfg, params, Tokenizer.from_file(tokenizer_json) if tokenizer_json else None
    return from_pretrained(c.path, dtype=dtype, revision=c.revision, strict=strict)


def is_checkpoints_dir(path) -> bool:
    return (Path(path) / SETTINGS).is_file()


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); use another --out") from None


def _arch(cfg: ModelConfig) -> dict:
    d = json.loads(json.dumps(cfg.to_dict()))
    return {k: v for k, v in d.items() if k not in EXECUTION_ONLY}


def _free(params) -> None:
    """Release the params' device buffers now rather than whenever the garbage collector runs."""
    for leaf in jax.tree.leaves(params):
        if isinstance(leaf, jax.Array) and not leaf.is_deleted():
            leaf.delete()
    gc.collect()


# ---- probing ------------------------------------------------------------------------------------------


def probe_checkpoints(checkpoints, out, *, items=None, prompt_source: str = "built-in prompts", lam: float = 5.0,
                      top_k: int = 1, max_len: int | None = None, batch_size: int = 8, dtype: str | None = None,
                      tokens_per_step: int = 0, name: str | None = None, heatmap_steps=(), heatmap_layers=(),
                      strict: bool = False, command: str = "", progress: bool = True, report: bool = True) -> Path:
    """Probe each checkpoint (specs or Checkpoint values) not yet recorded in `out`, one at a time on the same
    prompts (`items` as probes.prompts reads them; default probes.prompts.DEFAULT_PROMPTS), then write the
    report (unless `report` is False). Returns index.html's path."""
    checkpoints = parse_checkpoints(checkpoints)
    if top_k < 1 or batch_size < 1 or (max_len is not None and max_len < 1) or tokens_per_step < 0:
        raise ValueError(f"top_k={top_k}, batch_size={batch_size}, max_len={max_len}: expected positive integers, "
                         f"tokens_per_step={tokens_per_step}: expected an integer >= 0")
    if not lam > 0:
        raise ValueError(f"lambda={lam}: expected a positive number")
    if name is not None and not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"name={name!r}: expected letters, digits, '.', '_' or '-' (it names the figure files)")
    items = list(prompt_lib.DEFAULT_PROMPTS if items is None else items)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fixed = {"lam": lam, "top_k": top_k, "max_len": max_len, "dtype": dtype, "tokens_per_step": tokens_per_step}
    state = _open(out, fixed, items, prompt_source, checkpoints)
    state.update(name=name or state.get("name") or _default_name(checkpoints[0]),
                 command=command or state.get("command", ""),
                 report={"heatmap_steps": list(heatmap_steps), "heatmap_layers": list(heatmap_layers)})
    write_atomic(out / SETTINGS, json.dumps(state, indent=1) + "\n")
    done = _recorded(out)
    for i, c in enumerate(checkpoints, 1):
        head = f"[{i}/{len(checkpoints)}] step {c.step}: {c.source}"
        if c.step in done:
            print(f"{head}: recorded, skipped", flush=True)
            continue
        print(f"{head}: loading", flush=True)
        t0 = time.perf_counter()
        cfg, params, tokenizer = load(c, dtype, strict)
        try:
            t1 = time.perf_counter()
            state = _check_model(out, state, c, cfg)
            tokens = _tokens(out, items, tokenizer, cfg, max_len, c)
            pad = getattr(tokenizer, "pad_token_id", None)
            batches = lambda: prompt_lib.left_padded_batches(tokens, batch_size, 0 if pad is None else pad)
            total = prompt_lib.num_batches(len(tokens), batch_size)
            norms, n_tokens = norm_matrices(params, cfg, batches(), PROBE_SITES, total=total, progress=progress)
            alpha_LH, _ = first_token_mass(params, cfg, batches(), total=total, progress=progress)
            write_record(out, make_record(c.step, c.step * tokens_per_step, norms, frequency_map(cfg), lam, top_k,
                                          alpha_LH))
        finally:
            _free(params)
            del params
        t2 = time.perf_counter()
        state["checkpoints"][str(c.step)] = {"spec": c.spec, "source": c.source, "load_s": round(t1 - t0, 3),
                                             "probe_s": round(t2 - t1, 3), "tokens": n_tokens}
        write_atomic(out / SETTINGS, json.dumps(state, indent=1) + "\n")
        print(f"{head}: loaded in {t1 - t0:.1f} s, probed {n_tokens} tokens in {t2 - t1:.1f} s", flush=True)
    if 0 not in _recorded(out):
        warnings.warn(f"{out}: no step-0 checkpoint was given, so the report has no random-init baseline; values "
                      "after RoPE are biased toward low frequencies even at init (add e.g. ID@step0)", stacklevel=2)
    return write_report(out) if report else out / "index.html"


def _recorded(out: Path) -> set[int]:
    return {int(p.stem.split("_")[1]) for p in record_dir(out).glob("step_*.npz")}


def _default_name(c: Checkpoint) -> str:
    if c.revision is not None or not os.path.exists(c.path):
        name = c.path.rpartition("/")[2]
    else:
        path = Path(os.path.abspath(c.path))
        name = path.name if c.run_step is not None else path.parent.name or path.name
    return re.sub(r"[^\w.-]", "_", name) or "checkpoints"


def _open(out: Path, fixed: dict, items: list, prompt_source: str, checkpoints) -> dict:
    """checkpoints.json's content, new or as left by an earlier run with the same settings; another
    directory's content, other settings, other prompts or another source for a recorded step are refused."""
    path = out / SETTINGS
    if not path.is_file():
        if any(out.iterdir()):
            raise ValueError(f"{out} is not empty and has no {SETTINGS}, so it is not a checkpoints directory; "
                             "use another --out")
        return {"settings": {**fixed, "prompt_source": prompt_source}, "model": None, "checkpoints": {}}
    state = _read_json(path)
    old = state.get("settings", {})
    diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in fixed.items() if old.get(k) != v]
    if diff:
        raise ValueError(f"{out} holds probes with other settings ({'; '.join(diff)}); use another --out")
    if (out / PROMPTS).is_file() and _read_json(out / PROMPTS)["items"] != json.loads(json.dumps(items)):
        raise ValueError(f"{out} holds probes of other prompts (from {old.get('prompt_source')}); give the same "
                         "prompts or use another --out")
    recorded = _recorded(out)
    for c in checkpoints:
        was = state["checkpoints"].get(str(c.step), {}).get("source")
        if c.step in recorded and was is not None and was != c.source:
            raise ValueError(f"step {c.step} is recorded in {out} from {was}, now given as {c.source}; use another "
                             f"--out, or delete {record_dir(out) / f'step_{c.step:08d}.npz'} to probe it again")
    return state


def _check_model(out: Path, state: dict, c: Checkpoint, cfg: ModelConfig) -> dict:
    arch = _arch(cfg)
    if state["model"] is None:
        state["model"] = json.loads(json.dumps(cfg.to_dict()))
        return state
    old = {k: v for k, v in state["model"].items() if k not in EXECUTION_ONLY}
    diff = [f"{k}: {old.get(k)!r} vs {arch.get(k)!r}" for k in sorted(old.keys() | arch.keys())
            if old.get(k) != arch.get(k)]
    if diff:
        raise ValueError(f"checkpoint {c.spec!r} (step {c.step}) is another model than the one recorded in {out} "
                         f"({'; '.join(diff[:6])}): one directory holds the checkpoints of one model")
    return state


def _tokens(out: Path, items: list, tokenizer, cfg: ModelConfig, max_len, c: Checkpoint) -> list[list[int]]:
    """The prompts' token ids: encoded by the first checkpoint and saved in prompts.json; later checkpoints'
    tokenizers must give the same ids (a series is probed on one token sequence)."""
    path = out / PROMPTS
    saved = _read_json(path)["tokens"] if path.is_file() else None
    if tokenizer is None and saved is not None:
        return saved
    limit = max_len or cfg.max_seq_len
    tokens = [t[:limit] for t in prompt_lib.encode(items, tokenizer, vocab_size=cfg.vocab_size)]
    if saved is None:
        write_atomic(path, json.dumps({"items": items, "max_len": limit, "tokens": tokens}) + "\n")
        return tokens
    if tokens != saved:
        raise ValueError(f"checkpoint {c.spec!r} (step {c.step}): its tokenizer encodes the prompts differently "
                         f"from the one of the steps recorded in {out}")
    return tokens


# ---- the report ---------------------------------------------------------------------------------------


def write_report(out) -> Path:
    """Figures and index.html of a checkpoints directory, from its records only (nothing is loaded)."""
    out = Path(out)
    if not is_checkpoints_dir(out):
        raise FileNotFoundError(f"{out}: no {SETTINGS}; probe checkpoints with `python -m probes checkpoints`")
    state = _read_json(out / SETTINGS)
    records = read_records(out)
    if not records or state.get("model") is None:
        raise FileNotFoundError(f"{out}: no probe records yet; run `python -m probes checkpoints` on it")
    s = state["settings"]
    model = ModelConfig.from_dict(state["model"], f"{out / SETTINGS}: model")
    bad = [i for i in state.get("report", {}).get("heatmap_layers", []) if not 0 <= i < model.num_layers]
    if bad:
        raise ValueError(f"heatmap layers {bad}: out of range 0..{model.num_layers - 1}")
    steps = [r.step for r in records]
    positive = [x for x in steps if x > 0]  # Pythia's steps are log-spaced, then linear: a log axis shows both
    st = {"lam": s["lam"], "top_k": s["top_k"], **state.get("report", {}),
          "log_steps": len(positive) > 1 and positive[-1] >= 100 * positive[0]}
    d = {"records": records, "summary": em.summarize(records, s["lam"]), "freq": frequency_map(model),
         "model": model}
    name = state.get("name") or "checkpoints"
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    prompts = _read_json(out / PROMPTS) if (out / PROMPTS).is_file() else {"tokens": []}
    n_tokens = sum(len(t) for t in prompts["tokens"])
    baseline = ([] if steps[0] == 0 else [
        f"Warning: no step-0 checkpoint, so there is no random-init baseline. After RoPE the low-frequency share is "
        f"high even at init; the values below are dated from step {steps[0]}, not from initialisation. Add the "
        "step-0 checkpoint (e.g. ID@step0 for Pythia) and rerun: recorded steps are skipped."])
    intro = baseline + [
        f"{len(records)} checkpoints of {name} at steps {', '.join(map(str, steps))}; model: {model.num_layers} "
        f"layers, d_model {model.d_model}, {model.num_heads} heads of {model.dim_per_head} ({model.kv_heads} KV "
        f"heads), position {model.position}" + (f" on {model.rotary_dim} of {model.dim_per_head} dims"
                                               if model.position == "rope" and model.rotary_dim < model.dim_per_head
                                               else "") + ".",
        f"Every checkpoint is probed on the same {len(prompts['tokens'])} prompts ({n_tokens} tokens, from "
        f"{s.get('prompt_source')}); M[head, dim] is the L2 norm over those tokens; massive: M > {s['lam']:g} x the "
        f"head mean; top-{s['top_k']} dims per head for the low-frequency share."]
    paragraphs = emergence_paragraphs({name: d}, st) + [
        "What this can show: when, over one real training run, Q and K concentrate their norm in a few dims (and "
        "whether V does), dated against the step-0 record. Few prompts give M over few tokens: use --text-file "
        "for more. After RoPE, the low-frequency share is high already at step 0: read it against step 0 and "
        "against Q/K before RoPE, never on its own."]
    known = bool(s.get("tokens_per_step"))
    rows = [[int(step), records[steps.index(int(step))].tokens_seen if known else None, c["spec"], c.get("load_s"),
             c.get("probe_s")] for step, c in sorted(state["checkpoints"].items(), key=lambda kv: int(kv[0]))
            if int(step) in steps]
    sections = [Section("Summary", paragraphs=paragraphs), emergence_section(name, d, st, out, figs),
                sinks_section({name: records}, st, out, figs),
                Section("Checkpoints", tables=[Table(["step", "tokens seen", "checkpoint", "load s", "probe s"], rows,
                                                     caption="Each checkpoint as given, and wall seconds")])]
    if state.get("command"):
        sections.append(Section("Command", code=state["command"]))
    return write_index(out, f"Massive values over training: {name} checkpoints", sections, intro=intro)
