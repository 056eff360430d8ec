"""HF's ``Trainer`` drives the native decoder as it drives the HF model it mirrors: with gradient accumulation
over padded rows of different lengths, the logged losses and the trained weights are HF's (the Trainer's
token-count normalisation, ``num_items_in_batch``, reaches our loss)."""

from __future__ import annotations

import pytest
import torch

import hookscope


class _Padded(torch.utils.data.Dataset):
    """Rows of 3 to 12 tokens; the collator pads them and sets -100 on the padding."""

    def __init__(self, n: int, vocab: int) -> None:
        gen = torch.Generator().manual_seed(4)
        self.rows = [torch.randint(3, vocab, (int(torch.randint(3, 13, (), generator=gen)),), generator=gen)
                     for _ in range(n)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.rows[i]}


def _collate(items: list[dict]) -> dict:
    width = max(len(x["input_ids"]) for x in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, x in enumerate(items):  # right padding, as HF's GPT-2 tokenizer pads
        ids[i, :len(x["input_ids"])], mask[i, :len(x["input_ids"])] = x["input_ids"], 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def _train(model, tmp_path, name: str) -> list[float]:
    transformers = pytest.importorskip("transformers")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / name), per_device_train_batch_size=3, gradient_accumulation_steps=3, max_steps=3,
        learning_rate=3e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
        disable_tqdm=True, max_grad_norm=0.0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Padded(27, 101), data_collator=_collate)
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def test_trainer_with_accumulation_over_padded_rows_trains_the_native_model_as_hf(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=40, vocab_size=101, max_position_embeddings=16)
    hf = transformers.LlamaForCausalLM(config)
    ours = hookscope.load(hf)
    assert ours.state_dict()["embed.weight"].data_ptr() != hf.model.embed_tokens.weight.data_ptr()
    hf_losses, our_losses = _train(hf, tmp_path, "hf"), _train(ours, tmp_path, "ours")
    assert len(our_losses) == 3
    assert our_losses == pytest.approx(hf_losses, rel=1e-5)
    trained = ours.to_hf().state_dict()
    for name, p in hf.state_dict().items():
        torch.testing.assert_close(trained[name], p, atol=1e-5, rtol=1e-4, msg=name)


def test_num_items_in_batch_divides_the_summed_token_loss() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=101))
    model = hookscope.load(hf)
    batch = _collate([_Padded(5, 101)[i] for i in range(5)])
    per_token = model(**batch, loss_per_token=True).loss  # [batch, pos - 1], 0 where ignored
    got = model(**batch, num_items_in_batch=torch.tensor(37)).loss
    torch.testing.assert_close(got, per_token.sum() / 37)
    # HF's Trainer with a compute_loss_func pops the labels and still passes the count: ignored, as HF
    torch.testing.assert_close(model(batch["input_ids"], num_items_in_batch=37), model(batch["input_ids"]))


def test_an_hf_style_training_loop_moves_the_native_model_as_the_hf_one() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=40, vocab_size=101, max_position_embeddings=16)
    hf = transformers.LlamaForCausalLM(config).double()
    ours = hookscope.load(hf, dtype=torch.float64)
    data = _Padded(12, 101)
    for model in (hf, ours):
        # SGD: Adam would turn the float32-loss rounding of near-zero gradients into whole steps
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        model.train()
        for step in range(3):
            batch = _collate([data[i] for i in range(4 * step, 4 * step + 4)])
            out = model(**batch, use_cache=False)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    trained = ours.to_hf().state_dict()
    for name, p in hf.state_dict().items():  # float32 losses (HF's convention) on float64 models: 1e-8 apart
        torch.testing.assert_close(trained[name], p, atol=1e-6, rtol=1e-6, msg=name)


def test_activation_checkpointing_gives_the_same_gradients_and_the_trainer_can_turn_it_on(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=40, vocab_size=101, max_position_embeddings=16)
    model = hookscope.load(transformers.LlamaForCausalLM(config), dtype=torch.float64).train()
    batch = _collate([_Padded(4, 101)[i] for i in range(4)])
    model(**batch).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    recomputed = []
    model.blocks[1].register_forward_pre_hook(lambda module, args: recomputed.append(1))
    model.gradient_checkpointing_enable(every_n_layers=1)
    assert model.is_gradient_checkpointing
    model(**batch).loss.backward()
    assert len(recomputed) == 2  # block 1 ran again in the backward pass: it was checkpointed
    for p, want in zip(model.parameters(), plain, strict=True):
        torch.testing.assert_close(p.grad, want, atol=1e-12, rtol=1e-12)
    model.gradient_checkpointing_disable()
    with pytest.raises(ValueError, match="offloading"):
        model.activation_checkpointing_enable(offload=True)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, report_to=[], use_cpu=True,
        disable_tqdm=True, save_strategy="no", activation_checkpointing=True)
    transformers.Trainer(model=model.float(), args=args, train_dataset=_Padded(4, 101), data_collator=_collate).train()
    assert model.is_gradient_checkpointing
