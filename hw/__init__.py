"""fluidnpu.hw"""
