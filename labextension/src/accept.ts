/**
 * Accepting part of a suggestion: its next word (as an editor's Ctrl+Right moves) or its next
 * line. Pure: unit-tested in Node.
 */

/** A character of a word (a name or a number), in any script. */
export const WORD = /[\p{L}\p{N}_]/u;

/**
 * The next word of `text`, as an editor's Ctrl+Right moves: leading spaces
 * (not past a line end), then an identifier or number, or else one run of
 * the same kind of punctuation. A line break alone is a word.
 */
export function nextWord(text: string): string {
  if (!text) {
    return '';
  }
  if (text[0] === '\n') {
    return '\n';
  }
  let i = 0;
  while (i < text.length && (text[i] === ' ' || text[i] === '\t')) {
    i++;
  }
  if (i >= text.length || text[i] === '\n') {
    return text.slice(0, Math.max(i, 1));
  }
  const chars = Array.from(text.slice(i)); // whole code points
  const isWord = WORD.test(chars[0]);
  let taken = 0;
  for (const ch of chars) {
    if (ch === '\n' || ch === ' ' || ch === '\t') {
      break;
    }
    const word = WORD.test(ch);
    if (word !== isWord) {
      break;
    }
    if (!isWord && taken > 0 && ch !== chars[0]) {
      break; // punctuation: one run of the same character ("((" or "==")
    }
    taken += ch.length;
  }
  return text.slice(0, i + taken);
}

/** The next line of `text`: up to and with its line break (line breaks it starts with included). */
export function nextLine(text: string): string {
  const start = text.length - text.replace(/^\n+/, '').length;
  const end = text.indexOf('\n', start);
  return end < 0 ? text : text.slice(0, end + 1);
}
