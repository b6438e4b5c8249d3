/**
 * What others wrote (secret, identity and policy names, audit record fields, a server's error
 * details) made safe to print on a terminal: it cannot move the cursor, recolour, clear the
 * screen, start a new line or column, or reorder the text around it. Control characters (C0,
 * DEL, C1), Unicode bidi controls, line and paragraph separators and invisible characters become
 * visible escapes (\n, \t, \x1b, \u202e); a backslash is doubled, so an escape cannot be faked.
 * Every other character, in any script, is left as it is.
 */
const UNSAFE =
  // biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is what this regex is for
  /[\\\u0000-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ufff9-\ufffb]/g;
/** The same, less the backslash and the C0 characters, which JSON escapes itself. */
const UNSAFE_IN_JSON =
  /[\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ufff9-\ufffb]/g;

const NAMED: Readonly<Record<string, string>> = { '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t' };

const hex = (c: string, digits: number): string => c.charCodeAt(0).toString(16).padStart(digits, '0');

export function printable(value: unknown): string {
  return String(value).replace(
    UNSAFE,
    (c) => NAMED[c] ?? (c.charCodeAt(0) < 0x100 ? `\\x${hex(c, 2)}` : `\\u${hex(c, 4)}`),
  );
}

/**
 * JSON text (as JSON.stringify makes it) with those characters escaped as \uXXXX too: the same
 * JSON value, but nothing in it acts on a terminal. They can only be inside strings, where the
 * escape means the same character.
 */
export function printableJson(json: string): string {
  return json.replace(UNSAFE_IN_JSON, (c) => `\\u${hex(c, 4)}`);
}
