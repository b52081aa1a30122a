"""What the machine gives a stage at run time: CPU threads chosen from the CPUs actually free."""
