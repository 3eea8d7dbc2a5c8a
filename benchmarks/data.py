"""The edge-segmenter benchmarks' data: the sample clips at any size, labelled by the LiteRT teacher,
split into training clips (bikes, the first halves of carphone and bigbuckbunny) and held-out test
clips (the second halves, with their frame period)."""
from __future__ import annotations

import torch

from edge_client.video_source import file_duration
from ams.training.lowlatency import label_clips

TEACHER = "assets/teacher/selfie_segmentation_landscape.tflite"
NAMES = ("bikes", "carphone_pristine", "bigbuckbunny")


def size_name(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def sync(device: torch.device) -> None:
    """Wait for a GPU's queued work, so a wall-clock reading covers it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def load_data(sizes: list[tuple[int, int]]) -> dict:
    """Per size: training clips (bikes, first halves) and test clips (second halves, with the frame period)."""
    data = {}
    for size in sizes:
        clips = label_clips([f"data/videos/{n}.mp4" for n in NAMES], size, TEACHER)
        train, test = [clips[0]], []
        for name, (frames, labels) in zip(NAMES[1:], clips[1:]):
            half = len(frames) // 2
            period = file_duration(f"data/videos/{name}.mp4") / len(frames)
            train.append((frames[:half], labels[:half]))
            test.append((frames[half:], labels[half:], period))
        data[size] = {"train": train, "test": test}
    return data
