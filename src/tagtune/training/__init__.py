"""Fine-tuning: the settings (TrainConfig), the run folder (resume, the final swap), the epoch
loop, the optimizer and schedule, and the HTML report."""
