import lightning as L
import torch

from asdt_lightning.lit.callbacks import PWMCallback
from asdt_lightning.lit.module import ASDTModule
from asdt_lightning.method.pwm import pwm_signal
from conftest import small_module_kwargs

PWM = dict(period=4, duty=0.5, warmup=2)


class TeacherRecorder(L.Callback):
    """Records, at each training step, the step and the teacher the module was told to use."""

    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((pl_module.teacher_step, pl_module.teacher_source))


def fit(tmp_path, max_steps, loader, ckpt_path=None, pwm=PWM):
    torch.manual_seed(0)
    recorder = TeacherRecorder()
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[PWMCallback(**pwm), recorder],
        default_root_dir=tmp_path,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    module = ASDTModule(**small_module_kwargs(net={"backbone": "resnet18", "head_channels": 4}, cam_scales=[1.0]))
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer, recorder.seen


def test_callback_sets_the_teacher_from_the_global_step_and_logs_it(tmp_path, random_loader):
    trainer, seen = fit(tmp_path, 9, random_loader(n=6, batch_size=2, size=32))  # 3 batches an epoch: 3 epochs
    assert [s for s, _ in seen] == list(range(9))
    assert [src for _, src in seen] == [pwm_signal(t, **PWM) for t in range(9)]
    assert [src for _, src in seen] == [0, 0, 0, 0, 1, 1, 0, 0, 1]  # warm-up, then on at t mod 4 < 2
    assert "pwm/signal" in trainer.callback_metrics


def test_resume_mid_period_continues_the_wave_exactly(tmp_path, random_loader):
    loader = random_loader(n=6, batch_size=2, size=32)
    _, uninterrupted = fit(tmp_path / "a", 11, loader)
    first, _ = fit(tmp_path / "b", 5, loader)  # stops at step 5: in the middle of the second period
    ckpt = tmp_path / "mid.ckpt"
    first.save_checkpoint(ckpt)
    resumed, after = fit(tmp_path / "c", 11, loader, ckpt_path=str(ckpt))
    assert [s for s, _ in after] == list(range(5, 11))
    assert after == uninterrupted[5:]
    assert resumed.global_step == 11


def test_callback_state_round_trips_and_warns_on_a_changed_setting():
    cb = PWMCallback(period=150, duty=1 / 6, warmup=1000)
    state = cb.state_dict()
    PWMCallback(period=150, duty=1 / 6, warmup=1000).load_state_dict(state)
    import pytest

    with pytest.warns(UserWarning, match="PWM setting"):
        PWMCallback(period=150, duty=0.5, warmup=1000).load_state_dict(state)
