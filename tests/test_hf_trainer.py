"""Hugging Face Trainer with MuonWithAdamW and the spectral monitor: trains, logs, saves, resumes."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from muonscope.integrations.hf import add_spectral_monitor, muon_optimizer  # noqa: E402


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=16, length=12):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 64, (n, length), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.x[i]}


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg)


def _trainer(model, out, max_steps=4):
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=1e-3,
        logging_steps=1, save_strategy="steps", save_steps=2, report_to=[], use_cpu=True,
        disable_tqdm=True, seed=0, lr_scheduler_type="cosine", warmup_steps=1)
    opt = muon_optimizer(model, args, muon_lr=0.02)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), optimizers=(opt, None))
    return trainer, add_spectral_monitor(trainer, every=2)


def test_trainer_trains_logs_and_resumes(tmp_path):
    model = _llama()
    trainer, cb = _trainer(model, tmp_path / "a")
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4
    assert logs[-1]["loss"] < logs[0]["loss"]
    assert {"spectra/q/s_q50", "spectra/mlp_up/frac_failed", "spectra/mlp_down/s_q50"} <= set(logs[0])
    assert all(0 < logs[0][f"spectra/{t}/s_q50"] < 1 for t in ("q", "k", "v", "o", "mlp_up", "mlp_down"))
    assert not any(k.startswith("spectra/other") for k in logs[0])
    want = {n: p.detach().clone() for n, p in model.named_parameters()}

    resumed = _llama()
    trainer2, _ = _trainer(resumed, tmp_path / "a")
    trainer2.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    inner = getattr(trainer2.optimizer, "optimizer", trainer2.optimizer)  # accelerate's wrapper
    assert inner.muon._muon_step == 4  # 2 steps restored from the checkpoint, 2 run
    for n, p in resumed.named_parameters():
        torch.testing.assert_close(p.detach(), want[n], rtol=0, atol=1e-6)
