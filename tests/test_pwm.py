import pytest
import torch

from asdt_lightning.errors import ASDTUserError
from asdt_lightning.method.pwm import TEACHER_A, TEACHER_B, pwm_signal, validate_pwm


def wave(n, **kw):
    return [pwm_signal(t, **kw) for t in range(n)]


@pytest.mark.parametrize(
    ("period", "duty"), [(150, 1 / 6), (150, 1 / 3), (150, 0.5), (150, 2 / 3), (10, 0.3), (7, 0.0), (7, 1.0)]
)
def test_fraction_on_teacher_b_equals_duty_over_whole_periods(period, duty):
    s = wave(5 * period, period=period, duty=duty)
    assert sum(s) == round(duty * period) * 5
    assert sum(s) / len(s) == pytest.approx(duty)
    for k in range(5):  # each period holds the same on-time
        assert sum(s[k * period : (k + 1) * period]) == round(duty * period)


def test_on_time_is_one_block_at_the_start_of_each_period():
    s = wave(30, period=10, duty=0.3)
    assert s[:10] == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert s[10:20] == s[:10] == s[20:30]


def test_non_integer_on_time_rounds_to_whole_steps():
    s = wave(7 * 4, period=7, duty=0.5)  # 3.5 -> 4 steps per period
    assert sum(s) == 4 * 4


def test_duty_zero_is_teacher_a_only_and_one_is_teacher_b_only():
    assert set(wave(500, period=150, duty=0.0)) == {TEACHER_A}
    assert set(wave(500, period=150, duty=1.0)) == {TEACHER_B}
    assert set(wave(500, period=150, duty=1.0, warmup=100)[100:]) == {TEACHER_B}


def test_warmup_holds_teacher_a_then_the_wave_runs_on_the_global_step():
    s = wave(400, period=150, duty=0.5, warmup=160)
    assert set(s[:160]) == {TEACHER_A}
    no_warmup = wave(400, period=150, duty=0.5)
    assert s[160:] == no_warmup[160:]  # the wave is not restarted by the warm-up


def test_phase_shifts_the_wave():
    shifted = wave(300, period=150, duty=1 / 6, phase=40)
    plain = wave(340, period=150, duty=1 / 6)
    assert shifted == plain[40:]
    assert shifted != plain[:300]


def test_tensor_steps_match_int_steps():
    steps = torch.arange(1000)
    kw = dict(period=150, duty=1 / 3, phase=7, warmup=90)
    assert pwm_signal(steps, **kw).tolist() == wave(1000, **kw)
    assert pwm_signal(steps, **kw).dtype == torch.long


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(period=150, duty=-0.1), "duty must lie in [0, 1]"),
        (dict(period=150, duty=1.01), "duty must lie in [0, 1]"),
        (dict(period=0, duty=0.5), "period must be a positive integer number of steps, got 0"),
        (dict(period=-5, duty=0.5), "period must be a positive integer number of steps, got -5"),
        (dict(period=1.5, duty=0.5), "period must be a positive integer number of steps, got 1.5"),
        (dict(period=150, duty=0.5, phase=0.5), "phase must be an integer number of steps, got 0.5"),
        (dict(period=150, duty=0.5, warmup=-1), "warmup must be a non-negative integer number of steps, got -1"),
    ],
)
def test_bad_settings_raise_one_line_errors_naming_the_argument(kwargs, message):
    with pytest.raises(ASDTUserError) as err:
        validate_pwm(**kwargs)
    assert str(err.value).startswith(message)  # the argument's name, not a config path such as pwm.duty
    assert "\n" not in str(err.value)
