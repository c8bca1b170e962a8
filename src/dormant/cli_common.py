"""What the command-line modules share: the console, option types and input checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from dormant.errors import DormantError

console = Console()

Dataset = Annotated[str, typer.Option("--dataset", help="digits, mnist, fashion-mnist, cifar10, "
                                      "cifar100, svhn, imagefolder:PATH or npz:PATH")]
DataRoot = Annotated[Path | None, typer.Option(help="folder holding torchvision datasets")]
Download = Annotated[bool, typer.Option(help="let torchvision download the dataset")]
TrainSize = Annotated[int | None, typer.Option(help="seeded stratified subset of the train set")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="model name (default: per dataset)")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda")]
StudyFile = Annotated[Path | None, typer.Argument(help="YAML study file; flags override it")]
StudyDataset = Annotated[str | None, typer.Option(help="dataset (see dormant demo --help)")]
StudyDownload = Annotated[bool | None, typer.Option(help="let torchvision download")]
TestSize = Annotated[int | None, typer.Option(help="seeded stratified test subset")]
Methods = Annotated[str | None, typer.Option(help="comma-separated method names")]
Seeds = Annotated[str | None, typer.Option(help="e.g. 0,1,2")]
Forget = Annotated[str | None, typer.Option(
    "--forget", help="random:N, class:C, class:C:atypical:F, class:C:typical:F, canary:N, "
    "ids:PATH (default: per dataset)")]


def _numbers(text: str | None, what: str, kind: type = int) -> list | None:
    """A comma-separated flag value as a list of ``kind``; a bad item is one clear line."""
    if text is None:
        return None
    try:
        return [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        example = "0,5" if kind is int else "1e-5,1e-4"
        noun = "integers" if kind is int else "numbers"
        raise DormantError(
            f"--{what} takes comma-separated {noun}, e.g. {example}; got {text!r}"
        ) from None


def _check_data_root(data_root: Path | None) -> None:
    if data_root is not None and not data_root.exists():
        raise DormantError(f"--data-root {data_root} does not exist")


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DormantError(f"--out {out} is a file; give a folder to write into")


def _check_positive(**values: int | None) -> None:
    for name, v in values.items():
        if v is not None and v <= 0:
            raise DormantError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
