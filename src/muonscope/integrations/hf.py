"""Hugging Face ``Trainer``: a :class:`~muonscope.optim.MuonWithAdamW` built from
``TrainingArguments``, and a ``TrainerCallback`` that attaches a
:class:`~muonscope.spectra.SpectralMonitor` and logs its summary scalars through the Trainer's
loggers (TensorBoard, W&B, … and ``state.log_history``)::

    opt = muon_optimizer(model, args, muon_lr=0.02)
    trainer = Trainer(model=model, args=args, train_dataset=ds, optimizers=(opt, None))
    add_spectral_monitor(trainer, every=10)
    trainer.train()

Summary scalars, per layer type t over the matrices of the last sampled step: ``spectra/t/s_q50``
(mean median normalized singular value of the NS input) and ``spectra/t/frac_failed`` (mean share
of directions NS lifts to less than ρ).
"""

from __future__ import annotations

from collections import defaultdict

from muonscope.errors import ConfigError
from muonscope.optim import MuonWithAdamW
from muonscope.spectra import SpectralMonitor

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise ConfigError("the Trainer integration needs the 'hf' extra: pip install 'muonscope[hf]'") from exc

SUMMARY_KEYS = ("s_q50", "frac_failed")


def muon_optimizer(model, args, *, muon_lr: float | None = None, muon_weight_decay: float | None = None,
                   **kwargs) -> MuonWithAdamW:
    """MuonWithAdamW for ``model``: AdamW takes ``args``' learning rate, betas, eps and weight
    decay; Muon takes ``muon_lr`` (default: the same learning rate) and ``muon_weight_decay``
    (default: ``args.weight_decay``). ``kwargs`` go to :class:`MuonWithAdamW`."""
    lr = float(args.learning_rate)
    return MuonWithAdamW(model, lr=lr if muon_lr is None else muon_lr,
                         weight_decay=float(args.weight_decay if muon_weight_decay is None else muon_weight_decay),
                         adamw_lr=lr, adamw_betas=(args.adam_beta1, args.adam_beta2), adamw_eps=args.adam_epsilon,
                         adamw_weight_decay=float(args.weight_decay), **kwargs)


def _unwrap(optimizer):
    """The muonscope optimizer inside accelerate's ``AcceleratedOptimizer`` (or itself)."""
    while optimizer is not None and not hasattr(optimizer, "register_orth_hook") and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


class SpectralMonitorCallback(TrainerCallback):
    """Attaches a SpectralMonitor (``monitor_kwargs``: its arguments) to the Trainer's optimizer
    when training begins and adds summary scalars to each log (see module docstring)."""

    def __init__(self, every: int = 10, **monitor_kwargs) -> None:
        self.every, self.monitor_kwargs = every, monitor_kwargs
        self.monitor: SpectralMonitor | None = None
        self.last_summary: dict[str, float] = {}

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        opt = _unwrap(optimizer)
        if not hasattr(opt, "register_orth_hook"):
            raise ConfigError("SpectralMonitorCallback needs a muonscope optimizer: pass "
                              "optimizers=(muon_optimizer(model, args), None) to the Trainer")
        if self.monitor is None:
            self.monitor = SpectralMonitor(opt, every=self.every, keep_records=True, **self.monitor_kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is None or logs is None:
            return
        recs = self.monitor.records
        if recs:
            last = max(r["step"] for r in recs)
            groups: dict[str, list[dict]] = defaultdict(list)
            for r in recs:
                if r["step"] == last:
                    groups[r["layer_type"]].append(r)
            self.last_summary = {f"spectra/{t}/{k}": sum(r[k] for r in rs) / len(rs)
                                 for t, rs in sorted(groups.items()) for k in SUMMARY_KEYS}
            recs.clear()
        logs.update(self.last_summary)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self.last_summary)  # the Trainer copied ``logs`` there first

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None


def add_spectral_monitor(trainer, every: int = 10, **monitor_kwargs) -> SpectralMonitorCallback:
    """Add a :class:`SpectralMonitorCallback` to ``trainer`` ahead of its reporting callbacks,
    so the loggers (which run in callback order) receive its scalars."""
    cb = SpectralMonitorCallback(every, **monitor_kwargs)
    trainer.callback_handler.callbacks.insert(0, cb)
    return cb
