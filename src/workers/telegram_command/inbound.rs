//! Reading one inbound Bot API `Update` (https://core.telegram.org/bots/api#update): which kind
//! it is, and whether it carries a bot command for this bot. Pure functions, so the webhook
//! decides in microseconds and the tests cover every shape.

use serde_json::{Map, Value};

use crate::metrics::TELEGRAM_UPDATE_KINDS;

/// Longest command name the Bot API allows (`BotCommand.command`: 1–32 characters).
const MAX_COMMAND_LEN: usize = 32;
/// Longest argument text kept (a Telegram message holds at most 4096 characters; anything
/// longer did not come from Telegram and is cut, never stored whole).
pub const MAX_ARGS_CHARS: usize = 4096;

/// A bot command: `/name[@bot] args`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandText {
    pub chat_id: i64,
    /// Lowercase, without the `/` and the `@bot` suffix.
    pub name: String,
    /// The rest of the text, trimmed, at most [`MAX_ARGS_CHARS`] characters.
    pub args: String,
}

/// The update's kind: the first Bot API update field it carries, or `other`. Always one of
/// [`TELEGRAM_UPDATE_KINDS`], so the metric's series stay fixed.
pub fn kind(update: &Map<String, Value>) -> &'static str {
    TELEGRAM_UPDATE_KINDS
        .iter()
        .copied()
        .find(|k| *k != "other" && update.contains_key(*k))
        .unwrap_or("other")
}

/// The command an update carries for this bot, if any. Only new messages and channel posts
/// run commands (an edited message re-running `/report` would file it twice). A command
/// addressed to another bot (`/status@other_bot`) is not ours when `bot_username` is known.
pub fn command(
    update: &Map<String, Value>,
    kind: &str,
    bot_username: Option<&str>,
) -> Option<CommandText> {
    if kind != "message" && kind != "channel_post" {
        return None;
    }
    let message = update.get(kind)?.as_object()?;
    let chat_id = message.get("chat")?.get("id")?.as_i64()?;
    let text = message.get("text")?.as_str()?;
    let rest = text.strip_prefix('/')?;
    let (token, args) = match rest.find(char::is_whitespace) {
        Some(i) => (&rest[..i], rest[i..].trim()),
        None => (rest, ""),
    };
    let (name, addressee) = match token.split_once('@') {
        Some((name, bot)) => (name, Some(bot)),
        None => (token, None),
    };
    let valid_name = !name.is_empty()
        && name.len() <= MAX_COMMAND_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid_name {
        return None;
    }
    if let (Some(to), Some(me)) = (addressee, bot_username)
        && !to.eq_ignore_ascii_case(me)
    {
        return None;
    }
    Some(CommandText {
        chat_id,
        name: name.to_ascii_lowercase(),
        args: args.chars().take(MAX_ARGS_CHARS).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn message(text: &str) -> Map<String, Value> {
        obj(json!({"update_id": 1, "message": {
            "message_id": 5, "date": 1_700_000_000,
            "chat": {"id": -100_123, "type": "supergroup", "title": "ops"},
            "from": {"id": 42, "is_bot": false, "first_name": "Ann"},
            "text": text
        }}))
    }

    #[test]
    fn kinds_come_from_the_fixed_list() {
        assert_eq!(kind(&message("hi")), "message");
        assert_eq!(
            kind(&obj(json!({"update_id": 1, "callback_query": {}}))),
            "callback_query"
        );
        assert_eq!(
            kind(&obj(json!({"update_id": 1, "my_chat_member": {}}))),
            "my_chat_member"
        );
        assert_eq!(
            kind(&obj(json!({"update_id": 1, "zzz_new_kind": {}}))),
            "other"
        );
        assert_eq!(kind(&obj(json!({"update_id": 1}))), "other");
    }

    #[test]
    fn commands_with_and_without_the_bot_name() {
        let plain = command(&message("/status"), "message", Some("vsm_bot")).unwrap();
        assert_eq!(
            (plain.chat_id, plain.name.as_str(), plain.args.as_str()),
            (-100_123, "status", "")
        );
        let addressed = command(
            &message("/Report@VSM_bot  disk  full "),
            "message",
            Some("vsm_bot"),
        )
        .unwrap();
        assert_eq!(
            (addressed.name.as_str(), addressed.args.as_str()),
            ("report", "disk  full")
        );
        assert_eq!(
            command(&message("/status@other_bot"), "message", Some("vsm_bot")),
            None
        );
        // Without a configured name, an addressed command is taken as ours.
        assert!(command(&message("/status@other_bot"), "message", None).is_some());
        let multiline = command(&message("/report line one\nline two"), "message", None).unwrap();
        assert_eq!(multiline.args, "line one\nline two");
    }

    #[test]
    fn non_commands_are_none() {
        for text in ["hello", "", "/", "/@bot", "/bad-name", " /status", "/ünï"] {
            assert_eq!(command(&message(text), "message", None), None, "{text:?}");
        }
        let long = format!("/{}", "a".repeat(33));
        assert_eq!(command(&message(&long), "message", None), None);
        // A message with no text (a photo), an edited message, a callback query.
        let photo = obj(
            json!({"update_id": 2, "message": {"message_id": 1, "date": 1,
            "chat": {"id": 1, "type": "private"}, "photo": []}}),
        );
        assert_eq!(command(&photo, "message", None), None);
        let mut edited = message("/status");
        let body = edited.remove("message").unwrap();
        edited.insert("edited_message".into(), body);
        assert_eq!(command(&edited, "edited_message", None), None);
        // A chat id that is not an integer.
        let odd = obj(json!({"update_id": 3, "message": {"chat": {"id": "1"}, "text": "/status"}}));
        assert_eq!(command(&odd, "message", None), None);
    }

    #[test]
    fn channel_posts_run_commands_and_arguments_are_bounded() {
        let post = obj(
            json!({"update_id": 9, "channel_post": {"message_id": 1, "date": 1,
            "chat": {"id": -1001, "type": "channel"}, "text": format!("/report {}", "x".repeat(10_000))}}),
        );
        let c = command(&post, "channel_post", None).unwrap();
        assert_eq!(c.chat_id, -1001);
        assert_eq!(c.args.chars().count(), MAX_ARGS_CHARS);
    }
}
