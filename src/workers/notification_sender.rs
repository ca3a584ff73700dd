//! Interim: the interface branch `notify` announced (enqueue, enqueue_unlinked_reply, Message); its bodies queue nothing. Replaced wholesale by `git merge notify`.
use crate::repo::{DbError, SystemTx, TenantTx};
use uuid::Uuid;
pub enum Message {
    Telegram { chat_id: i64, text: String },
}
pub async fn enqueue(
    _tx: &mut TenantTx,
    _tenant: Uuid,
    _message: Message,
) -> Result<Uuid, DbError> {
    Ok(Uuid::nil())
}
pub async fn enqueue_unlinked_reply(
    _tx: &mut SystemTx,
    _chat_id: i64,
    _text: String,
) -> Result<Uuid, DbError> {
    Ok(Uuid::nil())
}
