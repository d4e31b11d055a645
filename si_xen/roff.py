"""Text into man-page (roff) source: the one escaping rule both page generators use."""


def esc(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + ln if ln.startswith((".", "'")) else ln) for ln in text.splitlines())
