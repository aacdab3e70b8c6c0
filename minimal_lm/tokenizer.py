"""A checkpoint's tokenizer: `tokenizers` for the text, jinja2 for the chat template.

Special tokens follow tokenizer.json's own post-processor, as transformers 5 does when a checkpoint
has a tokenizer.json (it ignores add_bos_token/add_eos_token in tokenizer_config.json then). Chat
templates render in the sandboxed jinja2 environment transformers uses, special tokens as variables.
"""
from __future__ import annotations

import json
import os
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import tokenizers

from minimal_lm.safetensors_io import CheckpointError


class Tokenizer:
    """Encode/decode text and render chat prompts the way the checkpoint's HF tokenizer does."""

    def __init__(self, tok: tokenizers.Tokenizer, config: dict | None = None, chat_template: str | None = None,
                 extra_eos_ids=()):
        self.backend, self.config = tok, dict(config or {})
        self.chat_template = chat_template or self.config.get("chat_template")
        if isinstance(self.chat_template, list):  # named templates: use "default"
            self.chat_template = {t["name"]: t["template"] for t in self.chat_template}.get("default")
        self.special_tokens = {k: _content(v) for k, v in self.config.items()
                               if k.endswith("_token") and _content(v) is not None}
        self.bos_token_id = self._id("bos_token")
        self.pad_token_id = self._id("pad_token")
        eos = [self._id("eos_token")] + [int(i) for i in extra_eos_ids]
        self.eos_token_ids = list(dict.fromkeys(i for i in eos if i is not None))
        # transformers 5 skips this WordPiece-era cleanup for BPE models unless forced
        self._clean_up = bool(self.config.get("clean_up_tokenization_spaces")) and (
            type(tok.model).__name__ != "BPE"
            or self.config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False))

    @classmethod
    def from_file(cls, tokenizer_json, tokenizer_config=None, chat_template=None, *, generation_config=None):
        """Load tokenizer.json, plus optional tokenizer_config.json, chat_template.jinja and
        generation_config.json (whose eos_token_id adds stop tokens, e.g. Llama 3's <|eot_id|>)."""
        try:
            tok = tokenizers.Tokenizer.from_file(os.fspath(tokenizer_json))
        except Exception as e:
            raise CheckpointError(f"{tokenizer_json}: cannot load tokenizer ({e})") from None
        config = _read_json(tokenizer_config) if tokenizer_config else {}
        template = None
        if chat_template:
            with open(chat_template, encoding="utf-8") as f:
                template = f.read()
        extra = []
        if generation_config:
            eos = _read_json(generation_config).get("eos_token_id")
            extra = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        return cls(tok, config, template, extra)

    @classmethod
    def from_dir(cls, path) -> "Tokenizer | None":
        """The tokenizer of a checkpoint directory, or None when it has no tokenizer.json."""
        def f(name):
            p = os.path.join(path, name)
            return p if os.path.exists(p) else None

        if not f("tokenizer.json"):
            return None
        return cls.from_file(f("tokenizer.json"), f("tokenizer_config.json"), f("chat_template.jinja"),
                             generation_config=f("generation_config.json"))

    def save(self, path):
        """Write tokenizer.json, tokenizer_config.json and chat_template.jinja (when there is one)."""
        os.makedirs(path, exist_ok=True)
        self.backend.save(os.path.join(path, "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast",
                  **{k: v for k, v in self.config.items() if k != "chat_template"}}
        with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        if self.chat_template:
            with open(os.path.join(path, "chat_template.jinja"), "w", encoding="utf-8") as f:
                f.write(self.chat_template)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        text = self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return _clean_up(text) if self._clean_up else text

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Render `messages` ([{"role", "content"}, ...]) with the checkpoint's chat template; encode
        the result with add_special_tokens=False (the template writes its own BOS)."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template (no chat_template.jinja and no "
                             "chat_template in tokenizer_config.json)")
        return _compile(self.chat_template).render(
            messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt,
            **{**self.special_tokens, **kwargs})

    def _id(self, name):
        token = self.special_tokens.get(name)
        return None if token is None else self.backend.token_to_id(token)


def _content(v):
    return v.get("content") if isinstance(v, dict) else v if isinstance(v, str) else None


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from None


def _clean_up(text):
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def _raise(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _Generation(jinja2.ext.Extension):
    """transformers' {% generation %} tag (marks assistant text for training masks): renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


_TEMPLATES: dict[str, jinja2.Template] = {}


def _compile(source: str) -> jinja2.Template:
    if source not in _TEMPLATES:
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _Generation])
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        _TEMPLATES[source] = env.from_string(source)
    return _TEMPLATES[source]
