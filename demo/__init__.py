"""Development tools, not the job: the offline demo (`make run`), its dataset, and the GCS emulator
the demo and the tests start. Not copied into the image."""
