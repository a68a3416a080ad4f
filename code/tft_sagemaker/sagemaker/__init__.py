"""The SageMaker integration: the container's paths, the launch plan from the environment,
the image's first process (supervise) and the toolkit's framework module (framework), stops and
checkpoints, the failure file and the metric lines SageMaker reads from the log."""
