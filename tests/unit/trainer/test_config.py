"""TrainerConfig's paper preset and its environment form (what the benchmarks give the trainer process)."""
import dataclasses

from ams.config import load_config
from services.trainer.config import PAPER, TrainerConfig


def test_the_paper_preset_has_the_papers_settings_and_takes_overrides():
    cfg = TrainerConfig.paper(t_horizon_s=30.0, atr=False, insecure=True)
    assert (cfg.t_update_s, cfg.k_iters, cfg.gamma, cfg.batch_size, cfg.r_init, cfg.r_max) == (10.0, 20, 0.05, 4, 1.0, 1.0)
    assert (cfg.t_horizon_s, cfg.atr) == (30.0, False) and TrainerConfig.paper().t_horizon_s == PAPER["t_horizon_s"] == 240.0
    cfg.validate()


def test_its_environment_is_read_back_as_the_same_config():
    cfg = TrainerConfig.paper(t_horizon_s=30.0, atr=False, train_workers=2, update_codecs="float16", insecure=True)
    names = [*PAPER, "train_workers", "update_codecs", "host", "insecure"]
    env = cfg.env(names)
    assert env["AMS_ATR"] == "false" and env["AMS_TRAINER_HOST"] == cfg.host   # a field's own variable name kept
    back = load_config(TrainerConfig, "AMS_", [], env=env)
    assert {n: getattr(back, n) for n in names} == {n: getattr(cfg, n) for n in names}
    assert back != TrainerConfig() and dataclasses.replace(back) == back
