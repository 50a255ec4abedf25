"""The training group as the driver sees it: `train.workers` Trainer actors forming one data-parallel job.

Methods are named like Trainer's and block until done; `start_train` / `finish_train` split `train` so
the driver can do other work (rollouts) while the group trains. Inputs go to the object store once and
every rank reads that copy. Weights and checkpoints come from rank 0: the ranks hold identical
parameters (`checksums` proves it). It does not create actors or placement groups (`launch` does).
"""

from __future__ import annotations

import ray


class TrainerGroup:
    def __init__(self, actors: list):
        self.actors = list(actors)   # rank 0 first

    def connect(self) -> None:
        """Rendezvous: rank 0 names an address, then every rank joins the torch.distributed job at once.
        A group of one stays a plain trainer, without torch.distributed."""
        if len(self.actors) == 1:
            return
        address = ray.get(self.actors[0].address.remote())
        ray.get([a.join.remote(address, rank, len(self.actors)) for rank, a in enumerate(self.actors)])

    def describe(self) -> dict:
        return ray.get(self.actors[0].describe.remote())

    def warm_start(self, texts: list[tuple[str, str]]) -> dict:
        return self._merge(ray.get(self._on_all_ranks("warm_start", texts)))

    def sft(self, texts: list[tuple[str, str]], epochs: int, lr: float, batch_size: int) -> dict:
        return self._merge(ray.get(self._on_all_ranks("sft", texts, epochs, lr, batch_size)))

    def resume(self, path: str) -> int:
        """Every rank continues from a checkpoint rank 0 saved (version and shuffling state, see Trainer.resume)."""
        return ray.get(self._on_all_ranks("resume", path))[0]

    def start_train(self, batch: list) -> list:
        """Every rank starts one RL update on the whole batch; returns the refs for `finish_train`."""
        return self._on_all_ranks("train", batch)

    def finish_train(self, refs: list) -> dict:
        """Waits for the update started by `start_train`; its stats, totals over ranks."""
        return self._merge(ray.get(refs))

    def train(self, batch: list) -> dict:
        return self.finish_train(self.start_train(batch))

    def publish(self) -> dict:
        """Rank 0's weights in the object store: version, checksum, ref, bytes (see Trainer.publish)."""
        return ray.get(self.actors[0].publish.remote())

    def save(self, path: str) -> str:
        """Rank 0 writes the HF files and optimizer.pt."""
        return ray.get(self.actors[0].save.remote(path))

    def checksums(self) -> list[str]:
        """Each rank's parameter checksum, in rank order: all equal while the job is healthy."""
        return ray.get([a.checksum.remote() for a in self.actors])

    def _on_all_ranks(self, method: str, data, *args) -> list:
        ref = ray.put(data)   # once, however many ranks read it
        return [getattr(a, method).remote(ref, *args) for a in self.actors]

    @staticmethod
    def _merge(results: list[dict]) -> dict:
        """Every rank returns the same totals (Trainer.fit sums them over ranks); seconds is the slowest rank's."""
        first = results[0]
        if any(r["trained_tokens"] != first["trained_tokens"] for r in results):
            raise RuntimeError(f"trainer ranks disagree on what they trained: {[r['trained_tokens'] for r in results]}")
        return {**first, "seconds": max(r["seconds"] for r in results)}
