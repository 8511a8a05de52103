"""ConDU in a plain Avalanche loop: an Avalanche benchmark, Avalanche's EvaluationPlugin, a W&B logger.

No YAML runner: the benchmark is built with Avalanche's own generator (``nc_benchmark``) over
in-memory tensors whose classes have names; the strategy is ``ConDU`` configured by keyword like
Avalanche's ``LwF(alpha=...)``, on LoRA units (ConDU's PEFT variant); ``LabelSpacePlugin`` scores
the current experience's classes in training and the classes seen so far in evaluation (read from
each Avalanche experience); ``ActiveClassCrossEntropy(0.2)`` is ConDU's label-smoothed loss over
those classes. Evaluation is task-agnostic (no task labels): the pretrained model plus the top-K
task models chosen by prototype similarity, logits averaged.

    python examples/condu_avalanche.py                       # offline, tiny random-weight CLIP, seconds
    python examples/condu_avalanche.py --arch ViT-B-16 --pretrained openai --device cuda

With ``--pretrained none`` (the default) the weights are random: the accuracies check the pipeline,
they are not results.
"""

from __future__ import annotations

import argparse
import time

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.logging import InteractiveLogger
from avalanche.training.plugins import EvaluationPlugin
from torch.utils.data import TensorDataset

from runs.wandb_logger import WandBLogger
from strategies.clip import ModelConfig, UnitsConfig, build_clip, image_size
from strategies.condu import ConDU
from strategies.training import ActiveClassCrossEntropy, LabelSpacePlugin

CLASS_NAMES = ["apple", "bicycle", "cloud", "dolphin", "engine", "forest"]


def pattern_images(n_classes: int, size: int, per_class: int, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """(train, test) tensors: each class a fixed random image pattern plus Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn((n_classes, 3, size, size), generator=gen)  # (C, 3, H, W)

    def draw(n: int) -> TensorDataset:
        targets = torch.arange(n_classes).repeat_interleave(n)  # (N,)
        return TensorDataset(2.0 * patterns[targets] + torch.randn((len(targets), 3, size, size), generator=gen),
                             targets)

    return draw(per_class), draw(per_class // 2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="clip-tiny", help="open_clip model name (default: the tiny test model)")
    parser.add_argument("--pretrained", default="none", help="open_clip pretrained tag, or none (random weights)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="outputs/examples", help="folder of the offline W&B run")
    parser.add_argument("--wandb-mode", default="offline", choices=["offline", "online", "disabled"])
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    started = time.time()
    torch.manual_seed(args.seed)
    units = UnitsConfig(kind="lora", lora_rank=8)  # ConDU-LoRA: LoRA on the MLPs of every block
    model, _, _ = build_clip(ModelConfig(arch=args.arch, pretrained=args.pretrained, units=units), args.device)
    model.set_class_prompts([[f"a photo of a {name}.", f"a drawing of a {name}."] for name in CLASS_NAMES],
                            train_prompts=[[f"a photo of a {name}."] for name in CLASS_NAMES])  # train: first
    train, test = pattern_images(len(CLASS_NAMES), image_size(model), per_class=16, seed=args.seed)
    benchmark = nc_benchmark(train, test, n_experiences=3, task_labels=False, seed=args.seed)

    logger = WandBLogger(project="clip-cl-examples", name="condu", mode=args.wandb_mode, dir=args.out)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loss_metrics(epoch=True),
                                 loggers=[InteractiveLogger(), logger])
    strategy = ConDU(
        model=model, optimizer=torch.optim.AdamW(model.trainable_parameters(), lr=1e-2),
        criterion=ActiveClassCrossEntropy(label_smoothing=0.2), top_k=2,  # ConDU's loss; 2 task models
        train_mb_size=16, train_epochs=1, eval_mb_size=64, device=args.device,
        plugins=[LabelSpacePlugin()], evaluator=evaluator,
    )
    results: dict[str, float] = {}
    for experience in benchmark.train_stream:
        strategy.train(experience)
        results = strategy.eval(benchmark.test_stream)
    logger.finish()
    accuracy = results["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    print(f"final stream accuracy {accuracy:.3f} (random weights: a pipeline check, not a result); "
          f"{time.time() - started:.1f} s; W&B run in {logger.run_dir}")
    return results


if __name__ == "__main__":
    main()
