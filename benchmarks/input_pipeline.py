r"""What building the training batches costs the training process.

The training loop and the batch builder share one Python process unless
`--input_workers` moves the builder to other processes. On an accelerator the
step itself is a few milliseconds, so what matters is how much of the
training process's own CPU time (and interpreter lock) each batch takes:

  python benchmarks/input_pipeline.py                       # workers 0 and 2
  python benchmarks/input_pipeline.py --workers=0,1,2,4 --json_out=/tmp/p.json

For each worker count it pulls --batches batches (after --warmup) from
`input_pipeline.PatchPipeline` and reports batches/s (wall) and the CPU
milliseconds per batch spent in this process (all its threads, not the
workers), and checks that the batches equal `make_batch`'s. Training images:
--images_dir (e.g. the output of experiments/export_luminance.py), else the
train291 TFDS dataset.
"""

import json
import pathlib
import resource
import sys
import time

from absl import app
from absl import flags
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from vdsr_jax import input_pipeline
from vdsr_jax import train
from vdsr_jax import train_config
# pylint: enable=g-import-not-at-top,wrong-import-position

_WORKERS = flags.DEFINE_list('workers', ['0', '2'], 'Worker counts to time.')
_BATCHES = flags.DEFINE_integer('batches', 300, 'Batches timed per count.')
_WARMUP = flags.DEFINE_integer('warmup', 10, 'Batches pulled before timing.')
_IMAGES_DIR = flags.DEFINE_string('images_dir', None, 'Folder of training '
                                  'images; default: the train291 dataset.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Source images folder '
                                '(for the dataset).')
_JSON_OUT = flags.DEFINE_string('json_out', None, 'Write the results here.')


def process_cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)  # excludes children
  return usage.ru_utime + usage.ru_stime


def measure(images, config, workers: int, batches: int, warmup: int):
  with input_pipeline.PatchPipeline(images, config, workers=workers) as p:
    first = next(p)
    for _ in range(warmup - 1):
      next(p)
    cpu, wall = process_cpu_seconds(), time.perf_counter()
    for _ in range(batches):
      next(p)
    cpu, wall = process_cpu_seconds() - cpu, time.perf_counter() - wall
  want = input_pipeline.make_batch(p.prepared, config, 0)
  same = all(np.array_equal(first[k], want[k]) for k in want)
  return {'batches_per_sec': batches / wall,
          'process_cpu_ms_per_batch': 1e3 * cpu / batches,
          'same_batches': same}


def main(argv):
  del argv
  # The trainer's own loader: the folder if given, else train291.
  images = train.load_train_images(train_config.TrainConfig(
      train_images_dir=_IMAGES_DIR.value, data_dir=_DATA_DIR.value))
  config = input_pipeline.PipelineConfig()  # the paper's 64 x 41x41
  results = {}
  for workers in (int(w) for w in _WORKERS.value):
    r = measure(images, config, workers, _BATCHES.value, _WARMUP.value)
    results[str(workers)] = r
    print(f'workers={workers}: {r["batches_per_sec"]:.0f} batches/s, '
          f'{r["process_cpu_ms_per_batch"]:.2f} ms CPU per batch in the '
          f'training process, same batches: {r["same_batches"]}', flush=True)
  if _JSON_OUT.value:
    pathlib.Path(_JSON_OUT.value).write_text(json.dumps(results, indent=1))


if __name__ == '__main__':
  app.run(main)
