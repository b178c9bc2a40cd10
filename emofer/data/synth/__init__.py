"""SynthFER's generator: face geometry and landmarks, the PIL renderer, samples and clips, export."""
