"""fluidnpu.synth"""
