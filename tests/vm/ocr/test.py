import re

# OCR against the guest's graphical console (std VGA, the kernel's bochs DRM driver and fbcon): log in on tty1 by
# typing, as a person at the VM's screen would, run a command there and read its output back by OCR. The guest's
# own view of tty1 (/dev/vcs1, through the backdoor) is the ground truth OCR is checked against.
machine.wait_for_unit("getty@tty1.service")
machine.wait_until_tty_matches("1", "login: ")
machine.wait_for_text("login:")

machine.send_chars("root\n")
machine.wait_until_succeeds("pgrep -t tty1 -x bash")
machine.send_chars("echo typed on tty one | tr a-z A-Z\n")
# Upper case appears only in the command's output: a match proves the shell on tty1 ran what was typed. OCR may
# see a space too many or too few between capitals, hence \s*.
machine.wait_until_tty_matches("1", "TYPED ON TTY ONE")
machine.wait_for_text(r"TYPED\s*ON\s*TTY", timeout=120)

text = machine.get_screen_text()
assert "typed on tty" in text, f"the typed line is not in the OCR text: {text!r}"
variants = machine.get_screen_text_variants()
assert len(variants) == 3, variants
assert any(re.search(r"TYPED\s*ON\s*TTY", v) for v in variants), variants
machine.screenshot("tty1")
