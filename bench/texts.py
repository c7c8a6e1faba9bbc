"""The text every synthesis benchmark speaks: one paragraph of five plain sentences of similar
length (about 300 characters, about 18 seconds of speech with the Joe voice), so that one
request is a realistic unit of work and the first sentence is a fair fifth of it. Beside it,
the classes of text that cost the most audio per character (benchmark 7)."""

PARAGRAPH = (
    "The old lighthouse keeper climbed the stairs each evening at dusk. "
    "He checked the lamp, wiped the glass, and wrote the weather in his log. "
    "Ships passed far out at sea, their lights small and steady. "
    "On stormy nights he stayed awake until dawn. "
    "In the morning he slept, and the gulls kept watch instead."
)
PARAGRAPH_SENTENCES = 5

# Chosen by what they cost: espeak-ng reads each character as several words.
AMPLIFIERS = {
    "emoji": "🈶 " * 10,
    # espeak-ng 1.51 speaks nothing for flag pairs (alone they are a 400 empty_input), so this
    # request makes only the word: it measures what a request costs beyond its audio.
    "flags": "Flags 🇺🇸🇫🇷🇩🇪🇯🇵🇧🇷🇮🇳🇨🇦🇲🇽",
    "symbols": "∑∫√∞≈≠ ©®™ §¶",
    "code points": "𝐀𝐁𝐂𝐃𝐄𝐅𝐆𝐇𝐈𝐉",
    "digits": "1234567890" * 4,
    "mixed scripts": "Привет мир, καλημέρα κόσμε, שלום עולם.",
}
