"""Tiny random-weight Llama models on disk, for testing the vLLM engines without downloads.

Two Llama shapes, and a SNAC folder:

* `build_orpheus_like(path)`: the Orpheus 3B layout that matters to voicekit: a 156940-id vocabulary whose
  Llama-3 control tokens sit at 128000.. (128000 `<|begin_of_text|>`, 128009 `<|eot_id|>`) and whose
  `<custom_token_N>` has id 128256 + N (so 128257..128263 are the speech/human/AI markers and audio codes
  start at 128266). The tokenizer adds the 128000 BOS itself, as the real one does.
* `build_tiny_chat(path)`: a small chat model with a Gemma-2-style chat template (`<start_of_turn>`,
  `<end_of_turn>`, no system role), standing in for Gemma-2-2b-it.
* `save_snac_folder(path)`: a SNAC 24 kHz model (random weights unless one is given) in the hub's layout
  (config.json + pytorch_model.bin), which the real loading code (`SNAC.from_pretrained`) reads.

The two Llama shapes are LlamaForCausalLM with head_dim 64 (vLLM's CPU attention rejects tiny head sizes such as 16),
2 heads, hidden 128 and tied embeddings stored as bfloat16, so the Orpheus-shaped one is about 40 MB.
The tokenizers are WordLevel tokenizers built offline with `tokenizers` and saved through transformers:
words outside their small word list encode as the unknown token, which is fine for engine tests.

Needs `transformers`, `tokenizers` and `torch` (the vLLM venv has them); import this module anywhere, the
heavy imports happen inside the builders. Run it as a script to build both into a folder:

    .venv-vllm/bin/python tests/tiny_models.py OUT_DIR
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path

# Orpheus / Llama-3 ids (Orpheus's tokenizer: `<custom_token_N>` is 128256 + N).
ORPHEUS_VOCAB_SIZE = 156940
LLAMA3_VOCAB = 128256
BEGIN_OF_TEXT = 128000
END_OF_TEXT = 128001
START_HEADER = 128006
END_HEADER = 128007
EOT = 128009
CUSTOM_TOKEN_BASE = 128256  # <custom_token_N> = 128256 + N
START_OF_SPEECH = 128257
END_OF_SPEECH = 128258
START_OF_HUMAN = 128259
END_OF_HUMAN = 128260
START_OF_AI = 128261
END_OF_AI = 128262
PAD = 128263
AUDIO_BASE = 128266

ORPHEUS_VOICES = ("tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe")

# Tiny chat model (Gemma-2-like specials).
CHAT_VOCAB_SIZE = 1024
CHAT_PAD, CHAT_EOS, CHAT_BOS, CHAT_UNK = 0, 1, 2, 3
START_OF_TURN, END_OF_TURN = 106, 107

# Gemma-2 style: BOS, turns marked with <start_of_turn>ROLE ... <end_of_turn>, assistant role is "model",
# a system message is refused (as Gemma-2's own template does), generation prompt opens a model turn.
GEMMA_STYLE_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Llama-3 style header template for the Orpheus-shaped tokenizer (its real tokenizer has one too).
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Words the tokenizers know (lower-cased input); anything else is the unknown token.
_COMMON_WORDS = """
    user model assistant system hello hi world how are you i am fine thanks the a an is it this that to
    of and in on what who why when where yes no please say something tell me story about cat dog sun
    moon good morning night voice speak one two three
"""
_WORDS = (
    *ORPHEUS_VOICES,
    *_COMMON_WORDS.split(),
    *(f"<{tag}>" for tag in ("laugh", "chuckle", "sigh", "cough", "sniffle", "groan", "yawn", "gasp")),
)
# Split input into <special-like> tags, words and single punctuation marks; whitespace is dropped.
_PRETOKENIZE_PATTERN = r"<\|?[A-Za-z_0-9]+\|?>|\w+|[^\w\s]"


def _base_vocab() -> list[str]:
    """Unknown token, single characters, then the word list (no duplicates)."""
    tokens = ["<unk>"]
    for ch in string.ascii_lowercase + string.digits + string.punctuation:
        if ch not in tokens:
            tokens.append(ch)
    for word in _WORDS:
        if word not in tokens:
            tokens.append(word)
    return tokens


def _save_tokenizer(
    path: Path,
    vocab: dict[str, int],
    *,
    unk: str,
    bos: str,
    eos: str,
    pad: str,
    specials: list[str],
    chat_template: str,
    model_max_length: int,
) -> None:
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        raise ValueError("tokenizer vocabulary ids must be contiguous from 0")
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_PRETOKENIZE_PATTERN), behavior="removed", invert=True)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
    )
    # Already in the vocabulary: registering them keeps their ids and marks them special.
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        model_max_length=model_max_length,
    )
    fast.chat_template = chat_template
    fast.save_pretrained(str(path))
    # Check what was written loads back with the ids the tests rely on.
    reloaded = PreTrainedTokenizerFast.from_pretrained(str(path))
    for token in specials:
        if reloaded.convert_tokens_to_ids(token) != vocab[token]:
            raise AssertionError(f"{token} lost its id {vocab[token]} on save")


def _save_model(
    path: Path,
    *,
    vocab_size: int,
    bos_id: int,
    eos_ids: list[int],
    pad_id: int,
    num_layers: int,
    max_position_embeddings: int,
    seed: int,
) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_ids[0] if len(eos_ids) == 1 else eos_ids,
        pad_token_id=pad_id,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(path), safe_serialization=True)
    GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_ids, pad_token_id=pad_id).save_pretrained(str(path))


def save_snac_folder(path: str | Path, model: object | None = None, seed: int = 0) -> Path:
    """Save `model` (default: SNAC 24 kHz with weights seeded by `seed`) as a hub-layout folder at `path`."""
    import torch
    from snac import SNAC

    from voicekit.tts.snac_decoder import SNAC_24KHZ_CONFIG

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if model is None:
        torch.manual_seed(seed)
        model = SNAC(**SNAC_24KHZ_CONFIG)
    (path / "config.json").write_text(json.dumps(SNAC_24KHZ_CONFIG))
    torch.save(model.state_dict(), path / "pytorch_model.bin")  # type: ignore[attr-defined]
    return path


def build_orpheus_like(path: str | Path, *, num_layers: int = 1, seed: int = 0) -> Path:
    """Write an Orpheus-shaped random model (vocab 156940, REFERENCE control ids) to `path`."""
    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    tokens = _base_vocab()
    if len(tokens) > BEGIN_OF_TEXT:
        raise AssertionError("base vocabulary too large")
    tokens += [f"tok{i}" for i in range(len(tokens), BEGIN_OF_TEXT)]
    named = {
        BEGIN_OF_TEXT: "<|begin_of_text|>",
        END_OF_TEXT: "<|end_of_text|>",
        START_HEADER: "<|start_header_id|>",
        END_HEADER: "<|end_header_id|>",
        EOT: "<|eot_id|>",
    }
    tokens += [
        named.get(i, f"<|reserved_special_token_{i - BEGIN_OF_TEXT}|>") for i in range(BEGIN_OF_TEXT, LLAMA3_VOCAB)
    ]
    tokens += [f"<custom_token_{n}>" for n in range(ORPHEUS_VOCAB_SIZE - CUSTOM_TOKEN_BASE)]
    assert len(tokens) == ORPHEUS_VOCAB_SIZE
    vocab = {token: i for i, token in enumerate(tokens)}
    _save_tokenizer(
        path,
        vocab,
        unk="<unk>",
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad=f"<custom_token_{PAD - CUSTOM_TOKEN_BASE}>",
        specials=list(named.values()),
        chat_template=LLAMA3_CHAT_TEMPLATE,
        model_max_length=4096,
    )
    _save_model(
        path,
        vocab_size=ORPHEUS_VOCAB_SIZE,
        bos_id=BEGIN_OF_TEXT,
        eos_ids=[EOT],  # as the real generation config; Orpheus requests stop on END_OF_SPEECH themselves
        pad_id=PAD,
        num_layers=num_layers,
        max_position_embeddings=4096,
        seed=seed,
    )
    return path


def build_tiny_chat(path: str | Path, *, num_layers: int = 1, seed: int = 1) -> Path:
    """Write a small chat model with a Gemma-2-style chat template to `path`."""
    path = Path(path)
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    fixed = {
        CHAT_PAD: "<pad>",
        CHAT_EOS: "<eos>",
        CHAT_BOS: "<bos>",
        CHAT_UNK: "<unk>",
        START_OF_TURN: "<start_of_turn>",
        END_OF_TURN: "<end_of_turn>",
    }
    words = [t for t in _base_vocab() if t != "<unk>"]
    tokens: list[str] = []
    word_iter = iter(words)
    for i in range(CHAT_VOCAB_SIZE):
        if i in fixed:
            tokens.append(fixed[i])
        else:
            tokens.append(next(word_iter, f"tok{i}"))
    if next(word_iter, None) is not None:
        raise AssertionError("chat vocabulary too small for the word list")
    vocab = {token: i for i, token in enumerate(tokens)}
    _save_tokenizer(
        path,
        vocab,
        unk="<unk>",
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        specials=[fixed[i] for i in sorted(fixed)],
        chat_template=GEMMA_STYLE_CHAT_TEMPLATE,
        model_max_length=2048,
    )
    _save_model(
        path,
        vocab_size=CHAT_VOCAB_SIZE,
        bos_id=CHAT_BOS,
        eos_ids=[CHAT_EOS, END_OF_TURN],
        pad_id=CHAT_PAD,
        num_layers=num_layers,
        max_position_embeddings=2048,
        seed=seed,
    )
    return path


def orpheus_prompt_ids(tokenizer, voice: str, text: str) -> list[int]:
    """The REFERENCE Orpheus prompt: [128259] + tokenizer("V: T").input_ids + [128009, 128260, 128261, 128257]."""
    return [START_OF_HUMAN, *tokenizer(f"{voice}: {text}").input_ids, EOT, END_OF_HUMAN, START_OF_AI, START_OF_SPEECH]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: tiny_models.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    orpheus = build_orpheus_like(out / "tiny-orpheus")
    chat = build_tiny_chat(out / "tiny-chat")
    print(json.dumps({"orpheus": str(orpheus), "chat": str(chat)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
