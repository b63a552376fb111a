"""Every run config under experiments/ validates and carries its paper's settings: the BIM
paper's App. F, or Chaitanya et al.'s / IDEAL's / GMI's for their methods."""

from __future__ import annotations

from pathlib import Path

import pytest

from segssl.config import load_run_config
from segssl.engine.loop import check_run

EXPERIMENTS = sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.yaml"))
# examples of methods from other papers than BIM, checked against their own paper's settings
CHAITANYA = {
    "contrast_global",
    "contrast_local",
    "contrast_joint",
    "rotation",
    "inpainting",
    "context_restoration",
    "self_training",
}
IDEAL = {"ideal_pretrain", "ideal_finetune"}
GMI = {"gmi", "gmi_pretrain", "consistency"}  # the GMI paper's protocol (Sec. 4.2)
BIM = [p for p in EXPERIMENTS if p.stem not in CHAITANYA | IDEAL | GMI]


def test_the_example_configs_exist() -> None:
    names = {p.stem for p in EXPERIMENTS}
    assert {"bim_pretrain", "bim_finetune", "baseline"} <= names


@pytest.mark.parametrize("path", BIM, ids=lambda p: p.stem)
def test_experiment_config_validates_with_app_f_schedule(path: Path) -> None:
    cfg = load_run_config(path)
    if cfg.train.init_from is None:  # init_from names a pre-training's output, not yet present
        check_run(cfg)
    # App. F (ACDC): 50 epochs of 200 iterations, RAdam, warm-up x N over 10 epochs then cosine;
    # pre-training lr 5e-7, N 400; fine-tuning (and the supervised baselines) lr 1e-7, N 200;
    # semi-supervised methods "follow exactly the same configuration as ... fine-tune" (App. E)
    assert (cfg.train.epochs, cfg.train.iters_per_epoch) == (50, 200)
    assert (cfg.optim.name, cfg.optim.warmup_epochs) == ("radam", 10)
    expected = {"pretrain": (5e-7, 400.0), "finetune": (1e-7, 200.0), "semi": (1e-7, 200.0)}
    expected = expected[cfg.stage]
    assert (cfg.optim.lr, cfg.optim.warmup_factor) == expected
    assert cfg.augment.crop == 224
    if cfg.stage in ("finetune", "semi"):
        assert cfg.data.target in {"lv", "rv", "myo"}  # BIM: one binary task per structure


def test_bim_pretrain_carries_the_paper_method_settings() -> None:
    cfg = load_run_config(EXPERIMENTS[0].parent / "bim_pretrain.yaml")
    m = cfg.method
    assert (m.k, m.heads, m.alpha, m.lambda_cc, m.temperature) == (40, 3, 0.5, 1.0, 0.07)
    assert (m.dense_tap, m.global_tap, cfg.data.partitions) == ("decoder4", "encoder", 3)


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if p.stem in GMI], ids=lambda p: p.stem)
def test_gmi_experiment_configs_follow_the_gmi_protocol(path: Path) -> None:
    """GMI Sec. 4.1-4.2 (ACDC): Adam, lr 1e-7 x400 over 10 epochs then cosine over 90, epochs of
    300 iterations, batches of 4 labeled and 10 unlabeled slices, crop 224, all classes at once,
    T = random horizontal and vertical flips, 8 labeled scans (5 %), no test set."""
    cfg = load_run_config(path)
    check_run(cfg)
    assert (cfg.train.epochs, cfg.train.iters_per_epoch) == (100, 300)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.warmup_factor) == ("adam", 1e-7, 400.0)
    assert cfg.optim.warmup_epochs == 10 and cfg.augment.crop == 224
    assert (cfg.data.batch_size, cfg.data.unlabeled_batch_size) == (4, 10)
    assert cfg.data.target == "all" and cfg.data.labeled_scans == 8
    assert cfg.data.split.sizes == (175, 25, 0)
    a = cfg.augment
    assert (a.paired_flip, a.paired_vflip, a.paired_rotation, a.translation) == (True, True, 0, 0)
    assert a.scale == (1.0, 1.0) and a.gamma == (1.0, 1.0)
    if cfg.method.name != "consistency":
        assert (cfg.method.w_global, cfg.method.w_local, cfg.method.w_cons) == (0.1, 0.1, 5.0)


@pytest.mark.parametrize(
    "path", [p for p in EXPERIMENTS if p.stem in CHAITANYA | IDEAL], ids=lambda p: p.stem
)
def test_contrastive_family_configs_carry_their_papers_settings(path: Path) -> None:
    cfg = load_run_config(path)
    if cfg.train.init_from is None:
        check_run(cfg)
    assert cfg.method.name == path.stem
    # 10,000 iterations per stage, Adam without warm-up (Chaitanya App. 7.2; IDEAL: Adam)
    assert cfg.train.epochs * cfg.train.iters_per_epoch == 10_000
    assert (cfg.optim.name, cfg.optim.warmup_factor) == ("adam", 1.0)
    assert cfg.data.preprocess.size == (192, 192) and cfg.augment.crop == 0
    if path.stem in IDEAL:
        assert (cfg.model.name, cfg.optim.lr) == ("resnet50_unet", 1e-5)
        assert cfg.model.decoders == ("transpose", "bilinear")
    else:  # the authors' 6-level U-Net, lr 1e-3, batch 40, tau 0.1
        assert (cfg.model.name, cfg.model.depth, cfg.optim.lr) == ("unet", 6, 1e-3)
        assert 40 in (cfg.data.batch_size, cfg.data.unlabeled_batch_size)
        assert getattr(cfg.method, "temperature", 0.1) == 0.1
