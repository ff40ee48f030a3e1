"""Tiny random-weight language models built offline, for tests of the LLM backends.

Nothing here downloads anything: the tokenizer is trained on a few strings, the weights are random.
Both models use a ChatML-style template (``<|im_start|>role\\n...<|im_end|>``), like SmolLM2.

Example (not run as a doctest: it writes files and needs ``transformers`` / ``gguf``)::

    from tests.tiny_models import build_tiny_llama, write_tiny_gguf
    hf_dir = build_tiny_llama(tmp_path / "hf")        # a directory for AutoModelForCausalLM
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")    # a file for llama_cpp.Llama
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np

# A ChatML template as a Hugging Face chat template. It differs from llama-cpp-python's built-in
# "chatml" string on purpose (a trailing default system line), so llama-cpp-python keeps it as
# "chat_template.default" and renders it with Jinja exactly as written here.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Strings the tokenizers see in training, so that a few multi-character tokens exist.
_CORPUS = [
    "Weights: l1:perceptual:gan=0.7:0.3:0.05",
    "Weights: l1:ssim=0.5:0.5",
    "The PSNR went up and the LPIPS went down, so keep the perceptual weight.",
    "system user assistant You are a tiny test model.",
    "0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 1.0",
]


def build_tiny_llama(directory: str | Path, *, hidden_size: int = 32, seed: int = 0) -> Path:
    """Save a random 2-layer ``LlamaForCausalLM`` and its byte-level BPE tokenizer to ``directory``.

    The tokenizer covers every byte (any text round-trips) and has a chat template, eos
    ``<|im_end|>``. Takes well under a second; the saved model is a few hundred KB.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is unknown
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(directory)

    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    return directory


def _spm_vocab() -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style ("llama") vocab: specials, 256 byte tokens, printable ASCII, a few merges.

    llama.cpp's SPM tokenizer splits text into characters and merges adjacent pairs whose
    concatenation is a token (highest score first); anything not covered falls back to the
    ``<0xXX>`` byte tokens. Spaces are spelled "▁" (U+2581), as in SentencePiece.
    """
    from gguf import TokenType

    tokens: list[str] = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types: list[int] = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    chars = [c for c in string.printable if c not in string.whitespace] + ["▁"]
    tokens += chars
    types += [TokenType.NORMAL] * len(chars)
    merged = ["We", "Wei", "Weig", "Weigh", "Weight", "Weights", "ts", "ght", "l1", "0.", "▁0", "ss", "ssim", "im",
              "gan", "ga", "pe", "per", "ce", "pt", "ua", "al", "▁u", "us", "er", "as", "si", "st", "an", "nt"]
    tokens += [m for m in merged if m not in tokens]
    types += [TokenType.NORMAL] * (len(tokens) - len(types))
    # Score: longer pieces win merges; specials and bytes never merge.
    scores = [0.0 if t != TokenType.NORMAL else -1000.0 + len(tok) for tok, t in zip(tokens, types)]
    return tokens, scores, [int(t) for t in types]


def write_tiny_gguf(path: str | Path, *, n_embd: int = 64, n_layer: int = 2, n_ctx_train: int = 2048,
                    seed: int = 0) -> Path:
    """Write a random llama-architecture GGUF (F32, ~400 tokens of SPM vocab, ChatML template) to ``path``.

    llama.cpp loads it, tokenizes any text (byte fallback), and can spell answers such as
    ``Weights: l1:perceptual:gan=0.7:0.3:0.05`` token by token, so a GBNF grammar can always be
    satisfied. The file is about 0.5 MB and loads in well under a second.
    """
    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens, scores, types = _spm_vocab()
    n_vocab, n_head, n_head_kv, n_ff = len(tokens), 4, 2, 2 * n_embd
    head_dim = n_embd // n_head

    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("agentloss-tiny-random-llama")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(tokens.index("<s>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))  # chat turns end with <|im_end|>, as in SmolLM2
    w.add_unk_token_id(tokens.index("<unk>"))
    w.add_add_bos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(CHAT_TEMPLATE)

    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        # numpy shape is (rows=out, cols=in); GGUFWriter reverses it into ggml's ne order.
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    names = gguf.TENSOR_NAMES
    T = gguf.MODEL_TENSOR
    w.add_tensor(names[T.TOKEN_EMBD] + ".weight", rand(n_vocab, n_embd))
    w.add_tensor(names[T.OUTPUT_NORM] + ".weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor(names[T.OUTPUT] + ".weight", rand(n_vocab, n_embd))
    for i in range(n_layer):
        def blk(t: gguf.MODEL_TENSOR, i: int = i) -> str:
            return names[t].format(bid=i) + ".weight"

        w.add_tensor(blk(T.ATTN_NORM), np.ones(n_embd, dtype=np.float32))
        w.add_tensor(blk(T.ATTN_Q), rand(n_embd, n_embd))
        w.add_tensor(blk(T.ATTN_K), rand(n_head_kv * head_dim, n_embd))
        w.add_tensor(blk(T.ATTN_V), rand(n_head_kv * head_dim, n_embd))
        w.add_tensor(blk(T.ATTN_OUT), rand(n_embd, n_embd))
        w.add_tensor(blk(T.FFN_NORM), np.ones(n_embd, dtype=np.float32))
        w.add_tensor(blk(T.FFN_GATE), rand(n_ff, n_embd))
        w.add_tensor(blk(T.FFN_UP), rand(n_ff, n_embd))
        w.add_tensor(blk(T.FFN_DOWN), rand(n_embd, n_ff))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
