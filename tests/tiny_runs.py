"""The few-second training run that the engine, fault and multi-host tests launch: ``--set`` overrides
of ``configs/synthetic-tiny.yaml`` (56 px, a handful of 64 px scenes)."""

TINY = [
    "model.overrides.image_size=56",
    "data.synthetic.train_images=8",
    "data.synthetic.val_images=2",
    "data.synthetic.test_images=0",
    "data.synthetic.image_size=[64, 64]",
    "data.synthetic.max_objects=3",
    "train.batch_size=4",
    "train.micro_batch_size=2",
    "train.lr=1e-3",
    "train.milestones=[2]",
    "output.progress=false",
    "output.plot=false",
    # The official schedule and loss, one process, no time budget: these runs must be reproducible
    # step for step (the demo's settings in the config use a wall-time schedule and a loader process).
    "train.lr_schedule=multistep",
    "train.dice_weight=0.0",
    "train.max_minutes=null",
    "data.num_workers=0",
]
