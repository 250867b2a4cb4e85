"""`monologue-compile HF_FOLDER -o dist --verify` with no other flag than --no-wasm (the wasm build of
these families is covered by test_hf_backends.py): a save_pretrained GPT-2 folder (Conv1D's (T, C)
activations, learned positions, GELU-tanh) and a Llama folder (transposed heads, rotate_half RoPE,
repeat_kv) compile at the default int8 into a dist whose WGSL plan and Rust crate cover the model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from test_hf_models import hf_configs, randomized  # noqa: E402


@pytest.mark.parametrize("family", ["gpt2", "llama-untied"])
def test_compile_cli_builds_a_save_pretrained_folder_for_every_backend(family, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    folder = tmp_path / family
    randomized(AutoModelForCausalLM.from_config(hf_configs()[family], dtype=torch.float32), 4).save_pretrained(folder)
    out = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(folder), "-o", str(out), "--no-wasm",
                        "--verify"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # --verify's R_q: GPT-2's learned positions, evaluated into a position table, as the folder has them
    assert json.loads((out / "parity.json").read_text())["ok"]
    plan = json.loads((out / "model" / "plan.json").read_text())
    assert plan["dispatch"]["decode"] and plan["dispatch"]["prefill"]
    gen = (out / "runtime_rs" / "src" / "model_gen.rs").read_text()
    assert gen.count("k::attention(") == 2  # one per layer, in the (1, T, H, D) layout the runtime reads
    ir = json.loads((out / "model" / "ir.json").read_text())
    assert all(n["type"]["shape"][:2] == [1, "T"] for n in ir["nodes"] if "T" in n["type"]["shape"])


def test_an_older_folder_with_pytorch_model_bin_and_gpt2_tokenizer_files_compiles(tmp_path):
    """A folder as TinyStories-33M's (GPT-Neo) is published: pytorch_model.bin, no safetensors, and
    GPT-2's slow tokenizer files (vocab.json + merges.txt), no tokenizer.json. The weights are read
    with weights_only=True; the tokenizer is the one transformers builds from those files (its ids
    on a few strings), and the model, with no chat template, continues the text."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from monologue_compile.tokenizer import Tokenizer

    folder = tmp_path / "tinystories"
    folder.mkdir()
    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["Once upon a time, there was a little girl named Lily. She was 3. 🙂"] * 40,
                            trainer=trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    bpe.model.save(str(folder))  # vocab.json, merges.txt
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
         "unk_token": "<|endoftext|>", "model_max_length": 2048}))
    cfg = hf_configs()["gpt_neo"]
    cfg.vocab_size, cfg.eos_token_id, cfg.bos_token_id = bpe.get_vocab_size(), 0, 0
    torch.manual_seed(5)
    model = randomized(AutoModelForCausalLM.from_config(cfg, dtype=torch.float32), 6)
    model.save_pretrained(folder)  # transformers 5 writes safetensors only: the .bin as older versions wrote it
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    assert (folder / "pytorch_model.bin").exists() and not (folder / "model.safetensors").exists()
    assert not (folder / "tokenizer.json").exists()

    out = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(folder), "-o", str(out), "--no-wasm",
                        "--verify"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "warning" not in r.stderr and json.loads((out / "parity.json").read_text())["ok"]
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    assert manifest["model"]["source"]["files"] == ["pytorch_model.bin"]
    assert manifest["chat"]["continues_text"] and manifest["chat"]["stop"] == [0]
    tok = Tokenizer.from_json((out / "model" / "tokenizer.json").read_text())
    auto = AutoTokenizer.from_pretrained(str(folder))
    for text in ["Once upon a time, Lily was 33.", "  two  spaces 🙂<|endoftext|>next", "ünïcödé"]:
        assert tok.encode(text) == auto(text)["input_ids"], text


TEXTS = ["我们今天是好朋友!", "The QUICK fox: naïve, isn't it?", "emoji 🙂 and 天气 [SEP] x"]


def compiled_folder_tokenizer(folder, tmp_path):
    """Compile `folder` (its own tokenizer files, no tokenizer.json) through the CLI; the manifest,
    the compiled tokenizer and transformers' tokenizer of the folder."""
    from transformers import AutoTokenizer

    from monologue_compile.tokenizer import Tokenizer

    assert not (folder / "tokenizer.json").exists()
    out = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "monologue_compile", "compile", str(folder), "-o", str(out), "--no-wasm"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((out / "model" / "manifest.json").read_text())
    return manifest, Tokenizer.from_json((out / "model" / "tokenizer.json").read_text()), AutoTokenizer.from_pretrained(str(folder))


def assert_same_tokens(tok, auto):
    for text in TEXTS:
        ids = auto(text, add_special_tokens=False)["input_ids"]
        assert tok.encode(text) == ids, text
        # the tokenizer.json's decoder (transformers' decode may clean up spaces across tokens too)
        assert tok.decode(ids) == auto.backend_tokenizer.decode(ids, skip_special_tokens=False), text


def test_a_gpt2_folder_with_a_bert_vocab_txt_compiles(tmp_path):
    """A GPT-2 published with BERT's tokenizer (as uer/gpt2-chinese-cluecorpussmall is): vocab.txt
    and a BertTokenizer tokenizer_config, no tokenizer.json. transformers builds the WordPiece
    tokenizer.json from them (BertNormalizer, BertPreTokenizer, WordPiece, [CLS] $A [SEP]); the
    compiled tokenizer gives its ids, decodes as it does, and a text starts with [CLS]."""
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "gpt2-chinese"
    folder.mkdir()
    wordpiece = tokenizers.BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(["我们是好朋友。The Quick brown fox, naïvely!", "今天天气很好 3.14 don't"] * 40,
                                  vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                  show_progress=False)
    wordpiece.save_model(str(folder))  # vocab.txt
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    cfg = hf_configs()["gpt2"]
    cfg.vocab_size = wordpiece.get_vocab_size()
    torch.manual_seed(3)
    randomized(AutoModelForCausalLM.from_config(cfg, dtype=torch.float32), 4).save_pretrained(folder)

    manifest, tok, auto = compiled_folder_tokenizer(folder, tmp_path)
    assert manifest["chat"]["continues_text"] and manifest["chat"]["template"]["opening"] == "[CLS]"
    assert_same_tokens(tok, auto)


def test_an_openai_gpt_folder_with_its_vocab_json_and_merges_txt_compiles(tmp_path):
    """GPT-1 (openai-gpt) as published: vocab.json + merges.txt of a BPE whose words end in
    `</w>`, no tokenizer.json. transformers converts them (BertNormalizer, BertPreTokenizer, BPE
    with end_of_word_suffix, BPEDecoder); the compiled tokenizer gives its ids and decodes as it
    does."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, OpenAIGPTConfig

    folder = tmp_path / "openai-gpt"
    folder.mkdir()
    bpe = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.BertNormalizer(lowercase=True)
    bpe.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    bpe.decoder = decoders.BPEDecoder()
    bpe.train_from_iterator(["The quick brown fox, naïvely jumping!", "isn't it 3.14 我们"] * 40, trainer=trainers.BpeTrainer(
        vocab_size=200, special_tokens=["<unk>"], end_of_word_suffix="</w>", show_progress=False))
    bpe.model.save(str(folder))  # vocab.json, merges.txt
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "OpenAIGPTTokenizer", "unk_token": "<unk>"}))
    cfg = OpenAIGPTConfig(vocab_size=bpe.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=64)
    torch.manual_seed(4)
    randomized(AutoModelForCausalLM.from_config(cfg, dtype=torch.float32), 4).save_pretrained(folder)

    manifest, tok, auto = compiled_folder_tokenizer(folder, tmp_path)
    assert manifest["chat"]["continues_text"]
    assert_same_tokens(tok, auto)
