"""pytest plugin that gates a BlendMask port to Ascend NPUs (or any PyTorch device)."""
