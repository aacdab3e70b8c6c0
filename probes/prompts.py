"""Prompts for probes: read from files, tokenize (optionally through a chat template). Batching is
minimal_lm.batching's (left_padded_batches, num_batches are re-exported here for the probes' callers)."""
from __future__ import annotations

from pathlib import Path

from minimal_lm import files
from minimal_lm.batching import left_padded_batches as left_padded_batches
from minimal_lm.batching import num_batches as num_batches

DEFAULT_PROMPTS = (
    "There is important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you "
    "about the important information there. The grass is green. The sky is blue. The sun is yellow. Here we "
    "go. There and back again. The pass key is 68203. Remember it. 68203 is the pass key. What is the pass key?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
    "clips did Natalia sell altogether in April and May?",
    "Is the city of Kyoto in Japan? Answer Yes or No.",
    "The history of the printing press begins in the fifteenth century, when movable metal type changed how "
    "books were made, copied and sold across Europe.",
)
"""Used when no prompt file is given: passkey, GSM8K-style, parametric and plain prose, as in the paper."""


def read_text_file(path) -> list[str]:
    """A plain-text file; paragraphs (separated by blank lines) are the prompts."""
    text = Path(path).read_text(encoding="utf-8")
    prompts = [" ".join(p.split()) for p in text.split("\n\n")]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValueError(f"{path}: no text (expected paragraphs separated by blank lines)")
    return prompts


def read_jsonl(path) -> list:
    """One prompt per line: a JSON string, or an object with "prompt" (text), "messages" (chat turns)
    or "tokens" (token ids). Other keys are ignored."""
    prompts = []
    for n, item in files.read_jsonl(path):
        if isinstance(item, dict) and not {"prompt", "messages", "tokens"} & item.keys():
            raise ValueError(f"{path}:{n}: object has none of the keys 'prompt', 'messages', 'tokens' "
                             f"(found {', '.join(sorted(item)) or 'no keys'})")
        if not isinstance(item, (str, dict)):
            raise ValueError(f"{path}:{n}: expected a JSON string or object, got {type(item).__name__}")
        prompts.append(item)
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


CHAT_CHOICES = ("auto", "on", "off")


def resolve_chat(chat, tokenizer) -> bool:
    """"auto": on when the tokenizer has a chat template (an instruct checkpoint); "on"/True requires one;
    "off"/False never uses it."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if chat in ("auto", None):
        return has
    if chat in ("on", True):
        if not has:
            raise ValueError("chat=on: this checkpoint's tokenizer has no chat template (no chat_template.jinja "
                             "and no chat_template in tokenizer_config.json); use chat=off or auto")
        return True
    if chat in ("off", False):
        return False
    raise ValueError(f"chat={chat!r}: expected one of {', '.join(CHAT_CHOICES)}")


def takes_system(tokenizer) -> bool:
    """Whether the chat template renders a system turn (Gemma 2's raises "System role not supported")."""
    probe = [{"role": "system", "content": "SYSTEM-PROBE"}, {"role": "user", "content": "hi"}]
    try:
        return "SYSTEM-PROBE" in tokenizer.apply_chat_template(probe, add_generation_prompt=True)
    except Exception:
        return False


def chat_messages(text: str, system: str | None, with_system_turn: bool) -> list[dict]:
    """One user turn, after a system turn, or with the system text leading the user turn when the
    template has no system role."""
    if not system:
        return [{"role": "user", "content": text}]
    if with_system_turn:
        return [{"role": "system", "content": system}, {"role": "user", "content": text}]
    return [{"role": "user", "content": f"{system}\n\n{text}"}]


def encode(prompts: list, tokenizer, *, chat: bool = False, max_len: int | None = None,
           vocab_size: int | None = None) -> list[list[int]]:
    """Token ids per prompt. `chat` wraps text prompts as one user turn of the tokenizer's chat template,
    after the prompt's "system" text when it has one (see chat_messages). Prompts longer than max_len
    keep their first max_len tokens."""
    system_turn = None
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, dict) and "tokens" in p:
            ids = [int(t) for t in p["tokens"]]
        else:
            if tokenizer is None:
                raise ValueError(f"prompt {i} is text but the model has no tokenizer; give token ids "
                                 "({\"tokens\": [...]}) or a checkpoint with tokenizer.json")
            messages = p.get("messages") if isinstance(p, dict) else None
            text = p["prompt"] if isinstance(p, dict) and "prompt" in p else p
            if chat or messages is not None:
                system = p.get("system") if isinstance(p, dict) else None
                if messages is None and system and system_turn is None:
                    system_turn = takes_system(tokenizer)
                messages = messages or chat_messages(text, system, system_turn)
                ids = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True),
                                       add_special_tokens=False)
            else:
                ids = tokenizer.encode(text)
        if not ids:
            raise ValueError(f"prompt {i} has no tokens")
        if vocab_size is not None and not all(0 <= t < vocab_size for t in ids):
            raise ValueError(f"prompt {i}: token ids must lie in [0, {vocab_size}) for this model")
        out.append(ids[:max_len] if max_len else ids)
    return out
