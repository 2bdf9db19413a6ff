"""Train a timm model with fkd-dali's loader and loss inside your own loop (single process or torchrun).

    python examples/train_own_loop.py --data train/ --labels labels.zarr --arch resnet18
    torchrun --nproc_per_node 8 examples/train_own_loop.py --data train/ --labels labels.zarr

Everything fkd-dali-specific is `create_loader` (replayed crops + dense soft targets, this
process's share under torchrun) and `SoftTargetCrossEntropy`; the rest is plain PyTorch.
"""
import argparse
import os

import timm
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import fkd_dali


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--passes", type=int, default=1, help="one pass = num_crops epochs")
    p.add_argument("--num-crops", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=256, help="crops per step per process")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="own_loop.pth")
    args = p.parse_args()

    distributed = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    loader = fkd_dali.create_loader(data=args.data, labels=args.labels, num_crops=args.num_crops,
                                    batch_size=args.batch_size, image_size=args.image_size, device=args.device)
    device = loader.device  # this rank's GPU (or the CPU), where batches arrive
    model = timm.create_model(args.arch, num_classes=loader.num_classes).to(device)
    if distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.passes * len(loader))
    loss_fn = fkd_dali.SoftTargetCrossEntropy(temperature=loader.temperature)  # the store's label temperature

    for _ in range(args.passes):
        pass_idx = loader.position[0]
        for images, target in loader:  # one pass: every image's num_crops stored crops
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(images)
            loss = loss_fn(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if not distributed or dist.get_rank() == 0:
            print(f"pass {pass_idx}: loss {loss.item():.4f}", flush=True)
    if not distributed or dist.get_rank() == 0:
        state = (model.module if distributed else model).state_dict()
        torch.save({"model": state, "position": loader.position}, args.out)
    loader.close()
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
