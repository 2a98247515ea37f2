//! The prompt of an OpenAI-style request body, read without building the
//! body: what a cluster transport routes a request by, on every request.
//!
//! A chat is rendered as `langcluster.integrations.openai_body.chat_text`
//! renders it, `<|role|>\ncontent\n` per message; a completion's `prompt`
//! or an embedding's `input` as `_plain` does (texts and token ids, lists
//! joined by newlines). Strings without escapes are borrowed from the body,
//! every field but the prompt is skipped unread.
//!
//! Only the shapes real clients send are read here: anything else (an image
//! part, a role that is not a string, a float among token ids, a duplicate
//! key, a body that is not JSON) gives `None`, and the caller reads the body
//! the slow way, whose rules decide. So the two readers agree, but for one
//! case: a field other than the prompt nested deeper than Python's parser
//! goes is skipped here, where the slow reader gives up on the body.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Which field holds the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `messages` (chat completions).
    Messages,
    /// `prompt` (completions).
    Prompt,
    /// `input` (embeddings).
    Input,
}

/// A prompt read: the whole text, and where the conversation before its
/// newest message ends, in characters (the whole text's length when there
/// is no history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub whole: String,
    pub head_chars: usize,
}

/// The prompt of `body`, or `None` when it is not one of the shapes read
/// here (see the module's documentation). Never panics.
pub fn read(field: Field, body: &[u8]) -> Option<Prompt> {
    match field {
        Field::Messages => {
            let chat: Chat<'_> = serde_json::from_slice(body).ok()?;
            chat.messages?.into_prompt()
        }
        Field::Prompt => {
            let completion: Completion = serde_json::from_slice(body).ok()?;
            completion.prompt.map(plain_prompt)
        }
        Field::Input => {
            let embedding: Embedding = serde_json::from_slice(body).ok()?;
            embedding.input.map(plain_prompt)
        }
    }
}

fn plain_prompt(text: Plain) -> Prompt {
    let head_chars = text.0.chars().count();
    Prompt {
        whole: text.0,
        head_chars,
    }
}

/// The three ways serde hands a string over, each made a `Cow` and given
/// to `$make`.
macro_rules! visit_strings {
    ($make:expr) => {
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok($make(Cow::Borrowed(v)))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok($make(Cow::Owned(v)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok($make(Cow::Owned(v.to_owned())))
        }
    };
}

#[derive(Deserialize)]
struct Chat<'a> {
    #[serde(borrow, default)]
    messages: Option<Messages<'a>>,
}

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    prompt: Option<Plain>,
}

#[derive(Deserialize)]
struct Embedding {
    #[serde(default)]
    input: Option<Plain>,
}

/// The rendered conversation: `whole` is `None` for an empty list (no
/// prompt), `head` the byte offset where the newest message begins.
struct Messages<'a> {
    whole: Option<String>,
    head: usize,
    count: usize,
    _borrow: std::marker::PhantomData<&'a ()>,
}

impl Messages<'_> {
    fn into_prompt(self) -> Option<Prompt> {
        let whole = self.whole?;
        let head_chars = if self.count > 1 {
            whole[..self.head].chars().count()
        } else {
            whole.chars().count()
        };
        Some(Prompt { whole, head_chars })
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Messages<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct List<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for List<'a> {
            type Value = Messages<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of messages")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut whole = String::new();
                let (mut head, mut count) = (0, 0);
                while let Some(item) = seq.next_element::<Message<'de>>()? {
                    head = whole.len();
                    count += 1;
                    whole.push_str("<|");
                    whole.push_str(&item.role);
                    whole.push_str("|>\n");
                    whole.push_str(&item.content);
                    whole.push('\n');
                }
                Ok(Messages {
                    whole: (count > 0).then_some(whole),
                    head,
                    count,
                    _borrow: std::marker::PhantomData,
                })
            }
        }
        d.deserialize_seq(List(std::marker::PhantomData))
    }
}

/// One message: an object with a string `role` (or none) and a `content`,
/// or a bare string (rendered with an empty role).
struct Message<'a> {
    role: Cow<'a, str>,
    content: Cow<'a, str>,
}

impl<'de> Deserialize<'de> for Message<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct One;
        impl<'de> Visitor<'de> for One {
            type Value = Message<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message")
            }
            visit_strings!(|text| Message {
                role: Cow::Borrowed(""),
                content: text,
            });
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut role: Option<Cow<'de, str>> = None;
                let mut content: Option<Content<'de>> = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match &*key {
                        "role" if role.is_none() => role = Some(map.next_value::<Text<'de>>()?.0),
                        "content" if content.is_none() => content = Some(map.next_value()?),
                        "role" | "content" => return Err(de::Error::custom("duplicate key")),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Message {
                    role: role.unwrap_or(Cow::Borrowed("")),
                    content: content.map_or(Cow::Borrowed(""), |c| c.0),
                })
            }
        }
        d.deserialize_any(One)
    }
}

/// A string, and nothing else (not null).
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Str;
        impl<'de> Visitor<'de> for Str {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            visit_strings!(Text);
        }
        d.deserialize_str(Str)
    }
}

/// A message's content: a string, null (empty), a text part, or a list of
/// strings and text parts (joined).
struct Content<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Content<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> Visitor<'de> for Any {
            type Value = Content<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message's content")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Content(Cow::Borrowed("")))
            }
            visit_strings!(Content);
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Ok(Content(text_part(map)?))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = String::new();
                while let Some(Part(text)) = seq.next_element()? {
                    out.push_str(&text);
                }
                Ok(Content(Cow::Owned(out)))
            }
        }
        d.deserialize_any(Any)
    }
}

/// One item of a content list: a string or a text part.
struct Part<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Part<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct One;
        impl<'de> Visitor<'de> for One {
            type Value = Part<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a text part")
            }
            visit_strings!(Part);
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Ok(Part(text_part(map)?))
            }
        }
        d.deserialize_any(One)
    }
}

/// `{"type": "text", "text": ...}` (other keys skipped): its text. Any other
/// part (an image, audio, a file) is refused, for the slow reader.
fn text_part<'de, A: MapAccess<'de>>(mut map: A) -> Result<Cow<'de, str>, A::Error> {
    let mut kind: Option<Cow<'de, str>> = None;
    let mut text: Option<Cow<'de, str>> = None;
    while let Some(key) = map.next_key::<Cow<'de, str>>()? {
        match &*key {
            "type" if kind.is_none() => kind = Some(map.next_value::<Text<'de>>()?.0),
            "text" if text.is_none() => text = Some(map.next_value::<Text<'de>>()?.0),
            "type" | "text" => return Err(de::Error::custom("duplicate key")),
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    match (kind.as_deref(), text) {
        (Some("text"), Some(text)) => Ok(text),
        _ => Err(de::Error::custom("not a text part")),
    }
}

/// A completion's `prompt` or an embedding's `input`: a string, an integer
/// (a token id), or a list of those and of lists, joined by newlines.
struct Plain(String);

impl<'de> Deserialize<'de> for Plain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Top;
        impl<'de> Visitor<'de> for Top {
            type Value = Plain;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a text, or a list of texts or token ids")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Plain(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                let mut out = String::new();
                join(seq, &mut out)?;
                Ok(Plain(out))
            }
        }
        d.deserialize_any(Top)
    }
}

/// The items of a list, each rendered and joined by newlines into `out`.
fn join<'de, A: SeqAccess<'de>>(mut seq: A, out: &mut String) -> Result<(), A::Error> {
    let mut first = true;
    while let Some(item) = seq.next_element::<Item>()? {
        if !first {
            out.push('\n');
        }
        first = false;
        out.push_str(&item.0);
    }
    Ok(())
}

/// One item of a plain prompt's list: a string, an integer, or a list.
struct Item(String);

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct One;
        impl<'de> Visitor<'de> for One {
            type Value = Item;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a text, a token id or a list")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Item(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Item(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Item(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                let mut out = String::new();
                join(seq, &mut out)?;
                Ok(Item(out))
            }
        }
        d.deserialize_any(One)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Option<Prompt> {
        read(Field::Messages, body.as_bytes())
    }

    #[test]
    fn a_chat_renders_role_and_content_per_message() {
        let p = chat(
            r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},
                {"role":"user","content":[{"type":"text","text":"h\u00e9"},"llo"]}],
                "stream":true,"tools":[{"a":[1,2,{"b":null}]}]}"#,
        )
        .unwrap();
        assert_eq!(p.whole, "<|system|>\nBe brief.\n<|user|>\nhéllo\n");
        assert_eq!(p.head_chars, "<|system|>\nBe brief.\n".chars().count());
        let one = chat(r#"{"messages":[{"content":null,"name":"x"}, "bare"]}"#).unwrap();
        assert_eq!(one.whole, "<||>\n\n<||>\nbare\n");
        let single = chat(r#"{"messages":[{"role":"user","content":"é"}]}"#).unwrap();
        assert_eq!(single.head_chars, single.whole.chars().count());
    }

    #[test]
    fn shapes_it_does_not_read_are_left_to_the_slow_reader() {
        for body in [
            r#"{"messages":[]}"#,
            r#"{"messages":null}"#,
            r#"{"model":"m"}"#,
            r#"[1]"#,
            r#"{"messages":[{"role":5,"content":"x"}]}"#,
            r#"{"messages":[{"role":null,"content":"x"}]}"#,
            r#"{"messages":[{"role":"u","content":[{"type":"image_url","image_url":{}}]}]}"#,
            r#"{"messages":[{"role":"u","role":"v","content":"x"}]}"#,
            r#"{"messages":[{"role":"u","content":"x"}],"messages":[]}"#,
            r#"{"messages":[{"role":"u","content":"\ud800"}]}"#,
            r#"{"messages":[{"role":"u","content":5}]}"#,
            r#"{"messages":[7]}"#,
            "not json",
            "",
        ] {
            assert_eq!(chat(body), None, "{body}");
        }
        // Skipped fields are skipped however deep they nest (Python's parser
        // would give up on this body and route it by no key).
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let body = format!(r#"{{"messages":[{{"role":"u","content":"x","x":{deep}}}]}}"#);
        assert_eq!(chat(&body).unwrap().whole, "<|u|>\nx\n");
        // A prompt nested past serde_json's depth is left to the slow reader.
        let deep = format!("{}1{}", "[".repeat(1_000), "]".repeat(1_000));
        assert_eq!(
            read(Field::Prompt, format!(r#"{{"prompt":{deep}}}"#).as_bytes()),
            None
        );
    }

    #[test]
    fn a_plain_prompt_joins_texts_and_token_ids() {
        let read_prompt = |b: &str| read(Field::Prompt, b.as_bytes()).map(|p| p.whole);
        assert_eq!(read_prompt(r#"{"prompt":"hi"}"#).as_deref(), Some("hi"));
        let ids = read_prompt(r#"{"prompt":[[1,2],[3],"a",-4]}"#);
        assert_eq!(ids.as_deref(), Some("1\n2\n3\na\n-4"));
        for body in [
            r#"{"prompt":null}"#,
            r#"{"prompt":1.5}"#,
            r#"{"prompt":[1.5]}"#,
            r#"{"prompt":[true]}"#,
            r#"{"prompt":{"a":1}}"#,
            r#"{"prompt":[99999999999999999999999]}"#,
        ] {
            assert_eq!(read_prompt(body), None, "{body}");
        }
        let input = read(Field::Input, br#"{"input":["a","b"],"model":"m"}"#);
        assert_eq!(input.map(|p| p.whole).as_deref(), Some("a\nb"));
    }
}
