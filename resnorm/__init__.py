"""resnorm: a CIFAR-style ResNet under seven normalisations, trained and tracked with MLflow.

A reader's map, in the order data flows through a training:

    config      TrainConfig (what is trained) and Launch (how): every allowed value and range
    machine     the CPUs, memory and thread waits a training gets from this machine
    data        the sources (digits, synthetic, image folders) and batches with augmentation as tensor ops
      bundle    what a source becomes: three splits of uint8 images, and the 70/15/15 split
      folders   image folders: listing, decoding in parallel, the decoded cache
      images    one image file -> pixels, as a viewer shows it
    norms       the seven normalisation layers and the name -> constructor table
    model       the ResNet-(6n+2), built around a norm constructor
    optim       the optimisers and schedules a run can name
    fast        the plain and the fast path: placement, autocast, torch.compile, the training step
    engine      the training loop and the best-validation model (no MLflow)
    snapshots   the per-epoch snapshot a stopped run resumes from, and the run's lock
    outbox      what a training sends to the tracking server in the background, retried
    tracking    MLflow around the runs: the server check, the experiment, a run's status and params
    runlog      the MLflow run of one training: params, per-epoch metrics, artifacts, model, status
    resume      continuing an interrupted run: its configuration, threads and data
    serving     the registered model: pt2 program + a classifier pyfunc
    weights     a run's kept weights, and the trained ResNet rebuilt from them
    job         one training start to end, as the train entry point and a sweep's workers run it
    sweep/      a grid of trainings under one parent run: planner, runner, child, pool, worker, raytune
    explain     GradCAM of trained models
    cli         how every entry point ends: one error line, a true run status, signals
    names, errors, home, metrics, plots, markdown: the keys, errors, folders and small tools they share
"""

from pathlib import Path

__version__ = "0.1.0"

# The MLproject's folder: the parent of this package (entry points, MLproject, conda.yaml).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
