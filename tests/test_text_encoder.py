"""`longvideo.models.text` on tiny T5/mT5/UMT5/CLIP/BERT encoders + tokenizers built here; no downloads."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import shutil

import pytest
import torch
import transformers

from longvideo.errors import UserError
from longvideo.models.text import TextEncoder, TextEncoderConfig

torch.set_num_threads(1)

CORPUS = [
    "a large red circle moving right quickly on a black background",
    "a small blue square moving up slowly on a white background",
    "a large green triangle moving left slowly on a gray background",
    "a small yellow circle moving down quickly on a navy background",
    "a purple square and an orange triangle moving right on a white background",
]
PROMPTS = [CORPUS[0], "", "a small purple triangle moving down slowly"]
L = 16  # max_length in most tests
D = 32  # hidden size of every tiny model

# family -> (special tokens: pad first, then the others; post-processor template; tokenizer kwargs)
SPECIALS = {
    "t5": (
        ["<pad>", "</s>", "<unk>"],
        "$A </s>",
        {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
    ),
    "clip": (
        ["<|endoftext|>", "<|startoftext|>", "<unk>"],  # as in SD's CLIP tokenizer, pad is the end token
        "<|startoftext|> $A <|endoftext|>",
        {
            "pad_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "bos_token": "<|startoftext|>",
            "unk_token": "<unk>",
        },
    ),
    "bert": (
        ["[PAD]", "[SEP]", "[UNK]", "[CLS]"],
        "[CLS] $A [SEP]",
        {"pad_token": "[PAD]", "sep_token": "[SEP]", "unk_token": "[UNK]", "cls_token": "[CLS]"},
    ),
}


def make_tokenizer(style: str):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    specials, template, kw = SPECIALS[style]
    unk = kw["unk_token"]
    tok = Tokenizer(models.WordLevel(unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=specials))
    used = [t for t in specials if t in template]
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, tok.token_to_id(t)) for t in used]
    )
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


def make_model(family: str, tok):
    torch.manual_seed(0)
    V = len(tok)
    if family in ("t5", "mt5", "umt5"):
        cfg_cls, model_cls = {
            "t5": (transformers.T5Config, transformers.T5EncoderModel),
            "mt5": (transformers.MT5Config, transformers.MT5EncoderModel),
            "umt5": (transformers.UMT5Config, transformers.UMT5EncoderModel),
        }[family]
        cfg = cfg_cls(
            vocab_size=V, d_model=D, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, decoder_start_token_id=0,
        )  # fmt: skip
        return model_cls(cfg)
    if family in ("clip", "clip_proj"):
        cfg = transformers.CLIPTextConfig(
            vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=32, projection_dim=16, pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        )  # fmt: skip
        cls = (
            transformers.CLIPTextModelWithProjection if family == "clip_proj" else transformers.CLIPTextModel
        )
        return cls(cfg)
    if family == "bert":
        cfg = transformers.BertConfig(
            vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=64, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        return transformers.BertModel(cfg)
    raise AssertionError(family)


def tok_style(family: str) -> str:
    return "clip" if family.startswith("clip") else "bert" if family == "bert" else "t5"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """family -> a single folder holding config.json + model.safetensors + the tokenizer files."""
    out = {}
    for family in ("t5", "mt5", "umt5", "clip", "clip_proj", "bert"):
        d = tmp_path_factory.mktemp(family)
        tok = make_tokenizer(tok_style(family))
        make_model(family, tok).save_pretrained(d)
        tok.save_pretrained(d)
        out[family] = d
    return out


def reference(folder, family, prompts, max_length=L, output="last_hidden_state"):
    """What calling transformers directly gives (a separately loaded model and tokenizer)."""
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    cls = {
        "t5": transformers.T5EncoderModel,
        "mt5": transformers.MT5EncoderModel,
        "umt5": transformers.UMT5EncoderModel,
        "clip": transformers.CLIPTextModel,
        "clip_proj": transformers.CLIPTextModelWithProjection,
        "bert": transformers.BertModel,
    }[family]
    model = cls.from_pretrained(folder, local_files_only=True).eval()
    t = tok(prompts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    kw = {} if family.startswith("clip") else {"attention_mask": t["attention_mask"]}
    with torch.no_grad():
        out = model(input_ids=t["input_ids"], output_hidden_states=True, **kw)
    if output == "pooled":
        return out.text_embeds if family == "clip_proj" else out.pooler_output
    return out.last_hidden_state if output == "last_hidden_state" else out.hidden_states[output]


def count_calls(enc):
    """A list that gets each forward call's batch size."""
    calls = []
    enc.model.register_forward_hook(
        lambda m, a, kw, o: calls.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    return calls


# ---- shapes, masks, equality with transformers ------------------------------------------------------------
@pytest.mark.parametrize("family", ["t5", "mt5", "umt5", "clip", "bert"])
def test_shapes_mask_and_equality(folders, family):
    enc = TextEncoder.from_pretrained(folders[family], cfg=TextEncoderConfig(max_length=L))
    assert enc.dim == D and enc.max_length == L and not enc.model.training
    hidden, mask = enc.encode(PROMPTS)
    assert hidden.shape == (3, L, D) and hidden.dtype == torch.float32 and torch.isfinite(hidden).all()
    assert mask.shape == (3, L) and mask.dtype == torch.long
    style = tok_style(family)
    eos = {"t5": "</s>", "clip": "<|endoftext|>", "bert": "[SEP]"}[style]
    extra = {"t5": 1, "clip": 2, "bert": 2}[style]  # special tokens the template adds
    ids, mask2 = enc.tokenize(PROMPTS)
    assert torch.equal(mask, mask2)
    for i, p in enumerate(PROMPTS):
        n = len(p.split()) + extra
        # real tokens (specials included) first, then padding
        assert mask[i].tolist() == [1] * n + [0] * (L - n)
        assert ids[i, n - 1].item() == enc.tokenizer.convert_tokens_to_ids(eos)
        assert (ids[i, n:] == enc.tokenizer.pad_token_id).all()
    torch.testing.assert_close(hidden, reference(folders[family], family, PROMPTS), rtol=0, atol=1e-6)


def test_empty_prompt_is_just_the_special_tokens(folders):
    enc = TextEncoder.from_pretrained(folders["t5"], cfg=TextEncoderConfig(max_length=L))
    hidden, mask = enc.encode([""])
    assert hidden.shape == (1, L, D) and torch.isfinite(hidden).all()
    assert mask[0].tolist() == [1] + [0] * (L - 1)  # T5: "" -> "</s>"


def test_truncation_at_max_length(folders):
    long = " ".join(CORPUS)  # 60 words
    for family, eos in (("t5", "</s>"), ("clip", "<|endoftext|>")):
        enc = TextEncoder.from_pretrained(folders[family], cfg=TextEncoderConfig(max_length=8))
        hidden, mask = enc.encode([long, "a red circle"])
        assert hidden.shape == (2, 8, D)
        assert mask[0].tolist() == [1] * 8
        ids, _ = enc.tokenize([long])
        assert ids[0, -1].item() == enc.tokenizer.convert_tokens_to_ids(eos)  # truncation keeps the end token
        torch.testing.assert_close(hidden, reference(folders[family], family, [long, "a red circle"], 8))


def test_batch_equals_single_prompts(folders):
    enc = TextEncoder.from_pretrained(folders["t5"], cfg=TextEncoderConfig(max_length=L, cache_size=0))
    hidden, mask = enc.encode(PROMPTS)
    for i, p in enumerate(PROMPTS):
        h1, m1 = enc.encode([p])
        torch.testing.assert_close(h1[0], hidden[i], rtol=1e-5, atol=1e-5)
        assert torch.equal(m1[0], mask[i])
    h_str, _ = enc.encode(PROMPTS[0])  # a bare string is a batch of one
    assert h_str.shape == (1, L, D)
    h0, m0 = enc.encode([])
    assert h0.shape == (0, L, D) and m0.shape == (0, L)


# ---- cache -------------------------------------------------------------------------------------------------
def test_cache_hits_are_identical_and_skip_the_model(folders):
    enc = TextEncoder.from_pretrained(folders["t5"], cfg=TextEncoderConfig(max_length=L))
    calls = count_calls(enc)
    h1, m1 = enc.encode(["a red circle", ""])
    assert calls == [2] and enc.cache_info()[:2] == (0, 2)
    h2, m2 = enc.encode(["", "a red circle"])
    assert calls == [2]  # no recomputation
    assert torch.equal(h2[0], h1[1]) and torch.equal(h2[1], h1[0]) and torch.equal(m2, m1.flip(0))
    h3, _ = enc.encode(["a blue square", "a red circle", "a blue square"])
    assert calls == [2, 1]  # only the new prompt, once, although it appears twice
    assert torch.equal(h3[1], h1[0]) and torch.equal(h3[0], h3[2])
    info = enc.cache_info()
    assert (info.hits, info.misses, info.maxsize, info.currsize) == (4, 3, 256, 3)
    h3.zero_()  # what encode returns is the caller's; the cache keeps its own copy
    assert torch.equal(enc.encode(["a red circle"])[0], h1[:1])
    enc.clear_cache()
    assert enc.cache_info() == (0, 0, 256, 0)
    enc.encode(["a red circle"])
    assert calls == [2, 1, 1]


def test_cache_lru_eviction_and_off(folders):
    enc = TextEncoder.from_pretrained(folders["t5"], cfg=TextEncoderConfig(max_length=L, cache_size=2))
    calls = count_calls(enc)
    enc.encode(["a"])
    enc.encode(["b"])
    enc.encode(["a"])  # hit: "a" becomes the most recent
    enc.encode(["c"])  # evicts "b"
    assert enc.cache_info().currsize == 2 and len(calls) == 3
    enc.encode(["a"])
    assert len(calls) == 3
    enc.encode(["b"])
    assert len(calls) == 4
    h, _ = enc.encode(["x", "y", "z"])  # more misses than the cache holds: all still returned
    assert h.shape == (3, L, D) and enc.cache_info().currsize == 2

    off = TextEncoder.from_pretrained(folders["t5"], cfg=TextEncoderConfig(max_length=L, cache_size=0))
    calls = count_calls(off)
    off.encode([""])
    off.encode([""])
    assert calls == [1, 1] and off.cache_info().currsize == 0


def test_cached_embeddings_can_feed_a_trained_model(folders):
    enc = TextEncoder.from_pretrained(folders["t5"], cfg=TextEncoderConfig(max_length=L))
    enc.encode(["a red circle"])
    hidden, _ = enc.encode(["a red circle"])
    assert not hidden.requires_grad and not hidden.is_inference()
    w = torch.nn.Parameter(torch.ones(D))
    (hidden * w).sum().backward()  # the embeddings are saved for backward: no inference tensors
    assert w.grad is not None


# ---- CLIP outputs ------------------------------------------------------------------------------------------
def test_clip_pooled_and_penultimate(folders):
    enc = TextEncoder.from_pretrained(
        folders["clip_proj"], cfg=TextEncoderConfig(max_length=L, output="pooled")
    )
    assert type(enc.model).__name__ == "CLIPTextModelWithProjection" and enc.dim == 16
    pooled, mask = enc.encode(PROMPTS)
    assert pooled.shape == (3, 16) and mask.shape == (3, L)
    torch.testing.assert_close(pooled, reference(folders["clip_proj"], "clip_proj", PROMPTS, output="pooled"))

    enc = TextEncoder.from_pretrained(folders["clip"], cfg=TextEncoderConfig(max_length=L, output="pooled"))
    assert type(enc.model).__name__ == "CLIPTextModel" and enc.dim == D
    torch.testing.assert_close(
        enc.encode(PROMPTS)[0], reference(folders["clip"], "clip", PROMPTS, output="pooled")
    )

    enc = TextEncoder.from_pretrained(folders["clip"], cfg=TextEncoderConfig(max_length=L, hidden_layer=-2))
    torch.testing.assert_close(enc.encode(PROMPTS)[0], reference(folders["clip"], "clip", PROMPTS, output=-2))


def test_full_clip_folder_loads_its_text_model(folders, tmp_path):
    tok = make_tokenizer("clip")
    text = make_model("clip", tok).config.to_dict()
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 8, "patch_size": 4}  # fmt: skip
    torch.manual_seed(0)
    full = transformers.CLIPModel(
        transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    )
    full.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "clip"
    enc = TextEncoder.from_pretrained(tmp_path, cfg=TextEncoderConfig(max_length=L))
    assert type(enc.model).__name__ == "CLIPTextModel"
    ids, _ = enc.tokenize(PROMPTS)
    with torch.no_grad():
        ref = full.text_model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(enc.encode(PROMPTS)[0], ref)


def test_bf16(folders):
    enc = TextEncoder.from_pretrained(folders["bert"], cfg=TextEncoderConfig(max_length=L, dtype="bf16"))
    hidden, _ = enc.encode(PROMPTS)
    assert hidden.dtype == torch.bfloat16 and torch.isfinite(hidden.float()).all()


# ---- folder layouts ----------------------------------------------------------------------------------------
def test_folder_layouts(folders, tmp_path):
    cfg = TextEncoderConfig(max_length=L)
    single = TextEncoder.from_pretrained(folders["umt5"], cfg=cfg)
    want, _ = single.encode(PROMPTS)

    pipe = tmp_path / "pipe"
    single.save_pretrained(pipe)
    assert (pipe / "text_encoder" / "config.json").is_file()
    assert (pipe / "text_encoder" / "model.safetensors").is_file()
    assert (pipe / "tokenizer" / "tokenizer.json").is_file()
    (pipe / "model_index.json").write_text("{}")
    for enc in (
        TextEncoder.from_pretrained(pipe, cfg=cfg),  # pipeline folder
        # its text_encoder/ folder, with tokenizer/ beside it
        TextEncoder.from_pretrained(pipe / "text_encoder", cfg=cfg),
        TextEncoder.from_pretrained(str(pipe / "text_encoder"), tokenizer_path=pipe / "tokenizer", cfg=cfg),
        TextEncoder.from_pretrained(pipe / "text_encoder", tokenizer_path=pipe, cfg=cfg),
        # the path from the config
        TextEncoder.from_pretrained(cfg=TextEncoderConfig(path=str(pipe), max_length=L)),
    ):
        assert type(enc.model).__name__ == "UMT5EncoderModel"
        torch.testing.assert_close(enc.encode(PROMPTS)[0], want, rtol=0, atol=0)


# ---- errors ------------------------------------------------------------------------------------------------
def one_line_error(match, fn, *a, **kw):
    with pytest.raises(UserError, match=match) as e:
        fn(*a, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_errors(folders, tmp_path):
    load = TextEncoder.from_pretrained
    one_line_error("not found", load, tmp_path / "nope")
    one_line_error("no text encoder folder given", load)
    one_line_error("no config.json|expected config.json", load, tmp_path)

    no_tok = tmp_path / "no_tok"
    shutil.copytree(folders["t5"], no_tok)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (no_tok / f).unlink()
    one_line_error("no tokenizer", load, no_tok)
    one_line_error("tokenizer folder not found", load, folders["t5"], tokenizer_path=tmp_path / "nope")

    no_weights = tmp_path / "no_weights"
    shutil.copytree(folders["t5"], no_weights)
    (no_weights / "model.safetensors").unlink()
    one_line_error("cannot load", load, no_weights)

    wrong_weights = tmp_path / "wrong_weights"  # a T5 config over BERT weights: nothing would load
    shutil.copytree(folders["bert"], wrong_weights)
    shutil.copy(folders["t5"] / "config.json", wrong_weights / "config.json")
    one_line_error("the checkpoint lacks .* weights of the t5 text encoder", load, wrong_weights)

    for model_type in ("not_a_model", "bart", "clip_vision_model"):
        bad = tmp_path / model_type
        shutil.copytree(folders["bert"], bad)
        cfg = json.loads((bad / "config.json").read_text())
        cfg["model_type"] = model_type
        (bad / "config.json").write_text(json.dumps(cfg))
        one_line_error("unsupported text encoder model_type", load, bad)
    (bad / "config.json").write_text("{}")
    one_line_error("no model_type", load, bad)
    (bad / "config.json").write_text("{not json")
    one_line_error("unreadable config", load, bad)

    one_line_error(
        "needs a model with a pooled output", load, folders["t5"], cfg=TextEncoderConfig(output="pooled")
    )
    one_line_error(
        "exceeds the model's 32 positions", load, folders["clip"], cfg=TextEncoderConfig(max_length=77)
    )
    for bad_cfg in ({"max_length": 0}, {"cache_size": -1}, {"output": "mean"}, {"dtype": "float8"}):
        one_line_error("text encoder", TextEncoderConfig, **bad_cfg)

    enc = load(folders["t5"], cfg=TextEncoderConfig(max_length=L))
    one_line_error("prompt 1 is not a string but int", enc.encode, ["ok", 3])
    one_line_error("prompt 0 is not a string but NoneType", enc.encode, [None])
    one_line_error("prompts must be a string or a list of strings", enc.encode, 5)


def test_bert_without_pooler(tmp_path):
    tok = make_tokenizer("bert")
    transformers.BertModel(make_model("bert", tok).config, add_pooling_layer=False).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    hidden, _ = TextEncoder.from_pretrained(tmp_path, cfg=TextEncoderConfig(max_length=L)).encode(PROMPTS)
    assert hidden.shape == (3, L, D)
    one_line_error(
        "lacks 2 weights", TextEncoder.from_pretrained, tmp_path, cfg=TextEncoderConfig(output="pooled")
    )


# ---- untrusted folders (issue #21) -------------------------------------------------------------------------
def crafted(folders, tmp_path, name, edit):
    """A copy of the t5 folder, its tokenizer.json changed by `edit` (a function of the JSON, or the text)."""
    d = tmp_path / name
    shutil.copytree(folders["t5"], d)
    f = d / "tokenizer.json"
    if isinstance(edit, str):
        f.write_text(edit)
    else:
        tok = json.loads(f.read_text())
        edit(tok)
        f.write_text(json.dumps(tok))
    return d


def undefined_template_token(tok):  # the library panics at encode time ("no entry found for key")
    tok["post_processor"]["single"] = [{"SpecialToken": {"id": "nope", "type_id": 0}}]


def second_sequence_in_single(tok):  # panics at encode time ("index out of bounds")
    tok["post_processor"]["single"] = [{"Sequence": {"id": "B", "type_id": 0}}]


def bad_charsmap(tok):  # panics at load time ("Cannot parse precompiled_charsmap")
    tok["normalizer"] = {"type": "Precompiled", "precompiled_charsmap": "AAAA"}


PANICS = {
    "undefined_template_token": (undefined_template_token, "uses 'nope', undefined"),
    "second_sequence_in_single": (second_sequence_in_single, "uses the sequence 'B'"),
    "bad_charsmap": (bad_charsmap, "precompiled_charsmap does not parse"),
}


@pytest.mark.parametrize("case", PANICS)
def test_a_tokenizer_that_panics_the_library_is_a_one_line_error(folders, tmp_path, case):
    """These files make the tokenizers library panic (pyo3's PanicException, a BaseException: before #21 a
    traceback, and an abort in the library's threads); they are now refused before the library sees them."""
    from tokenizers import Tokenizer

    edit, match = PANICS[case]
    d = crafted(folders, tmp_path, case, edit)
    with pytest.raises(BaseException) as raw:  # what the library does with the file on its own
        Tokenizer.from_file(str(d / "tokenizer.json")).encode_batch(["a red circle"])
    assert type(raw.value).__name__ == "PanicException" and not isinstance(raw.value, Exception)
    one_line_error(match, TextEncoder.from_pretrained, d, cfg=TextEncoderConfig(max_length=L))


def vocab_id(value):
    def edit(tok):
        tok["model"]["vocab"]["a"] = value

    return edit


@pytest.mark.parametrize(
    "edit, match",
    [
        (vocab_id(2**40), r"token ids must be integers in \[0, 2\^31\)"),
        (vocab_id(-1), r"token ids must be integers in \[0, 2\^31\)"),
        (vocab_id("3"), r"token ids must be integers"),
        (vocab_id(10**6), "has token id 1000000, but the text encoder embeds only"),  # a sparse vocab
        (lambda t: t["added_tokens"].append({"id": -5, "content": "x"}), "bad added token"),
        (lambda t: t["model"].update(type="Magic"), "model type 'Magic' is not one of"),
        (lambda t: t.pop("model"), "no model object"),
        (lambda t: t["model"]["vocab"].pop("<unk>"), "fails on a prompt: WordLevel error: Missing"),
        ('{"model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_to', r"tokenizer\.json: unreadable JSON"),
        ("[1, 2]", r"tokenizer\.json: expected a JSON object"),
        ("\x00\xff binary", r"tokenizer\.json: unreadable JSON"),
    ],
)
def test_malformed_tokenizer_json_is_a_one_line_error(folders, tmp_path, edit, match):
    d = crafted(folders, tmp_path, "bad", edit)
    one_line_error(match, TextEncoder.from_pretrained, d, cfg=TextEncoderConfig(max_length=L))


def test_malformed_tokenizer_config_is_a_one_line_error(folders, tmp_path):
    d = tmp_path / "cfg"
    shutil.copytree(folders["t5"], d)
    f = d / "tokenizer_config.json"
    good = json.loads(f.read_text())
    for bad, match in (
        ({"added_tokens_decoder": {"-1": {"content": "x"}}}, "bad token id '-1'"),
        ({"added_tokens_decoder": {"5": "x"}}, "token 5: no content string"),
        ({"tokenizer_class": 3}, "tokenizer_class must be a string"),
        ({"model_max_length": "big"}, "bad model_max_length"),
    ):
        f.write_text(json.dumps({**good, **bad}))
        one_line_error(match, TextEncoder.from_pretrained, d, cfg=TextEncoderConfig(max_length=L))
    with f.open("wb") as out:  # sizes are bounded before anything parses the file
        out.truncate(65 << 20)
    one_line_error("too large for a tokenizer file", TextEncoder.from_pretrained, d)


def test_a_panic_past_the_checks_is_still_a_one_line_error(folders, tmp_path):
    from tokenizers import Tokenizer

    d = crafted(folders, tmp_path, "panic", bad_charsmap)
    try:
        Tokenizer.from_file(str(d / "tokenizer.json"))
    except BaseException as e:  # the library's own exception type
        panic = type(e)
    enc = TextEncoder.from_pretrained(folders["t5"], cfg=TextEncoderConfig(max_length=L))

    def explode(*a, **kw):
        raise panic("index out of bounds")

    enc.tokenizer = type("Crashing", (), {"__call__": staticmethod(explode)})()
    one_line_error("the tokenizer in .* fails on a prompt: index out of bounds", enc.encode, ["a new prompt"])

    def interrupt(*a, **kw):
        raise KeyboardInterrupt

    enc.tokenizer = type("Interrupted", (), {"__call__": staticmethod(interrupt)})()
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C is not a bad folder
        enc.encode(["another prompt"])


def test_file_names_in_tokenizer_config_are_never_opened(folders, tmp_path):
    """tokenizer_config.json may name files (`vocab_file`, `fast_tokenizer_files`): the library would open
    those paths as given. We hand it the folder's own files only, so a config pointing elsewhere loads the
    folder's tokenizer."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "tokenizer.99.json").write_text("{not json: would fail if read")
    d = tmp_path / "names"
    shutil.copytree(folders["t5"], d)
    f = d / "tokenizer_config.json"
    cfg = json.loads(f.read_text())
    paths = {"tokenizer_file": str(outside / "tokenizer.99.json"), "vocab_file": "/etc/passwd",
             "fast_tokenizer_files": ["../outside/tokenizer.99.json"]}  # fmt: skip
    f.write_text(json.dumps({**cfg, **paths}))
    want = TextEncoder.from_pretrained(folders["t5"], cfg=TextEncoderConfig(max_length=L)).tokenize(PROMPTS)
    got = TextEncoder.from_pretrained(d, cfg=TextEncoderConfig(max_length=L)).tokenize(PROMPTS)
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))


def test_symlinks_out_of_the_folder_are_refused(folders, tmp_path):
    for name in ("tokenizer.json", "config.json", "model.safetensors"):
        d = tmp_path / name
        shutil.copytree(folders["t5"], d)
        shutil.move(d / name, tmp_path / f"outside-{name}")
        (d / name).symlink_to(tmp_path / f"outside-{name}")
        one_line_error(f"{name}: resolves to .*outside-{name}, outside", TextEncoder.from_pretrained, d)
    pipe = tmp_path / "pipe"
    (pipe / "text_encoder").mkdir(parents=True)
    (pipe / "tokenizer").symlink_to(folders["t5"], target_is_directory=True)  # a folder linked out of it
    for f in ("config.json", "model.safetensors"):
        shutil.copy(folders["t5"] / f, pipe / "text_encoder" / f)
    one_line_error("tokenizer: resolves to .*, outside", TextEncoder.from_pretrained, pipe)


def test_weights_are_safetensors_only(folders, tmp_path):
    d = tmp_path / "pickle"
    shutil.copytree(folders["t5"], d)
    sd = transformers.T5EncoderModel.from_pretrained(d).state_dict()
    torch.save(sd, d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    msg = one_line_error(
        "only pytorch_model.bin, a pickle, which longvideo never loads", TextEncoder.from_pretrained, d
    )
    assert "t.T5EncoderModel.from_pretrained(p, use_safetensors=False)" in msg
    assert ".save_pretrained(p, safe_serialization=True)" in msg
    # next to a safetensors file, a pickle is never looked at (here: not a pickle at all)
    both = tmp_path / "both"
    shutil.copytree(folders["t5"], both)
    (both / "pytorch_model.bin").write_bytes(b"not a pickle")
    TextEncoder.from_pretrained(both, cfg=TextEncoderConfig(max_length=L))


def test_a_sharded_text_encoder_index_is_confined(folders, tmp_path):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "sharded"
    shutil.copytree(folders["t5"], d)
    sd = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    keys = sorted(sd)
    save_file({k: sd[k] for k in keys[:5]}, d / "a.safetensors")
    save_file({k: sd[k] for k in keys[5:]}, d / "b.safetensors")
    index = {
        "metadata": {},
        "weight_map": {k: "a.safetensors" if i < 5 else "b.safetensors" for i, k in enumerate(keys)},
    }
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    TextEncoder.from_pretrained(d, cfg=TextEncoderConfig(max_length=L))  # a good index loads
    index["weight_map"][keys[0]] = "../b.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    one_line_error(r"'\.\./b\.safetensors' is not a plain file name", TextEncoder.from_pretrained, d)


def test_cli_generate_with_a_crafted_tokenizer_is_a_one_line_error(tmp_path, capsys):
    """The issue's case end to end: a pipeline folder whose tokenizer panics the library exits 2 with one
    line of ours."""
    from longvideo.cli import main
    from longvideo.pipelines.tiny import tiny_pipeline

    pipe = tmp_path / "pipe"
    tiny_pipeline().save_pretrained(pipe)
    f = pipe / "tokenizer" / "tokenizer.json"
    tok = json.loads(f.read_text())
    undefined_template_token(tok)
    f.write_text(json.dumps(tok))
    rc = main(["generate", "a red circle", "--model", str(pipe), "--frames", "5", "--steps", "1",
               "-o", str(tmp_path / "out.mp4")])  # fmt: skip
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("longvideo: error: "), err
    assert "TemplateProcessing single uses 'nope', undefined" in lines[0]
    assert not (tmp_path / "out.mp4").exists()
