DROP TABLE IF EXISTS telegram_updates;
DROP FUNCTION IF EXISTS vsm_resolve_telegram_chat(bigint);
DROP TABLE IF EXISTS telegram_chats;
