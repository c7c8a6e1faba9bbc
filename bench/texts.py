"""The text every synthesis benchmark speaks: one paragraph of five plain sentences of similar
length (about 300 characters, about 18 seconds of speech with the Joe voice), so that one
request is a realistic unit of work and the first sentence is a fair fifth of it."""

PARAGRAPH = (
    "The old lighthouse keeper climbed the stairs each evening at dusk. "
    "He checked the lamp, wiped the glass, and wrote the weather in his log. "
    "Ships passed far out at sea, their lights small and steady. "
    "On stormy nights he stayed awake until dawn. "
    "In the morning he slept, and the gulls kept watch instead."
)
PARAGRAPH_SENTENCES = 5
