//! Diesel table definitions, kept by hand in step with `migrations/`
//! (the `migrations_match_schema` test compares them with the live database).

diesel::table! {
    tenants (id) {
        id -> Uuid,
        slug -> Text,
        name -> Text,
        settings -> Jsonb,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        name -> Text,
        key_hash -> Bytea,
        key_prefix -> Text,
        created_at -> Timestamptz,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    system_states (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        system -> Int2,
        state -> Jsonb,
        version -> Int4,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    episodes (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        title -> Text,
        content -> Text,
        source -> Nullable<Text>,
        kind -> Nullable<Text>,
        tags -> Array<Text>,
        status -> Text,
        analysis -> Nullable<Jsonb>,
        error -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    policies (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        name -> Text,
        description -> Nullable<Text>,
        rules -> Jsonb,
        active -> Bool,
        priority -> Int4,
        effective_from -> Nullable<Timestamptz>,
        effective_until -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    artifacts (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        path -> Text,
        size -> Int8,
        sha256 -> Text,
        content_type -> Text,
        storage_backend -> Text,
        metadata -> Jsonb,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    task_log (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        job_id -> Uuid,
        worker -> Text,
        queue -> Text,
        attempt -> Int4,
        state -> Text,
        duration_ms -> Int8,
        error -> Nullable<Text>,
        inserted_at -> Timestamptz,
    }
}

diesel::joinable!(api_keys -> tenants (tenant_id));
diesel::joinable!(system_states -> tenants (tenant_id));
diesel::joinable!(episodes -> tenants (tenant_id));
diesel::joinable!(policies -> tenants (tenant_id));
diesel::joinable!(artifacts -> tenants (tenant_id));
diesel::joinable!(task_log -> tenants (tenant_id));
diesel::joinable!(events -> tenants (tenant_id));

diesel::table! {
    events (id) {
        id -> Uuid,
        seq -> Nullable<Int8>,
        tenant_id -> Nullable<Uuid>,
        topic -> Text,
        payload -> Jsonb,
        inserted_at -> Timestamptz,
        sequenced_at -> Nullable<Timestamptz>,
        published_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    event_retention (id) {
        id -> Int2,
        pruned_through -> Int8,
    }
}

diesel::table! {
    jobs (id) {
        id -> Uuid,
        tenant_id -> Nullable<Uuid>,
        state -> Text,
        queue -> Text,
        worker -> Text,
        args -> Jsonb,
        errors -> Jsonb,
        attempt -> Int4,
        max_attempts -> Int4,
        priority -> Int2,
        tags -> Array<Text>,
        meta -> Jsonb,
        unique_key -> Nullable<Text>,
        inserted_at -> Timestamptz,
        scheduled_at -> Timestamptz,
        attempted_at -> Nullable<Timestamptz>,
        attempted_by -> Nullable<Text>,
        completed_at -> Nullable<Timestamptz>,
        cancelled_at -> Nullable<Timestamptz>,
        discarded_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    job_queues (name) {
        name -> Text,
        paused -> Bool,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    job_nodes (id) {
        id -> Text,
        queues -> Array<Text>,
        started_at -> Timestamptz,
        heartbeat_at -> Timestamptz,
    }
}

diesel::table! {
    job_cron_slots (name, slot) {
        name -> Text,
        slot -> Timestamptz,
        job_id -> Nullable<Uuid>,
        inserted_at -> Timestamptz,
    }
}

diesel::table! {
    health_checks (id) {
        id -> Uuid,
        status -> Text,
        checks -> Jsonb,
        checked_at -> Timestamptz,
    }
}

diesel::table! {
    telegram_chats (chat_id) {
        chat_id -> Int8,
        tenant_id -> Uuid,
        label -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    telegram_updates (update_id) {
        update_id -> Int8,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    notifications (id) {
        id -> Uuid,
        tenant_id -> Nullable<Uuid>,
        channel -> Text,
        recipient -> Text,
        message -> Jsonb,
        state -> Text,
        attempts -> Int4,
        progress -> Jsonb,
        job_id -> Nullable<Uuid>,
        not_before -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        sent_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    notification_attempts (id) {
        id -> Uuid,
        notification_id -> Uuid,
        tenant_id -> Nullable<Uuid>,
        attempt -> Int4,
        result -> Text,
        status_code -> Nullable<Int4>,
        latency_ms -> Int8,
        error -> Nullable<Text>,
        next_retry_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(jobs -> tenants (tenant_id));
diesel::joinable!(notification_attempts -> notifications (notification_id));

diesel::allow_tables_to_appear_in_same_query!(
    tenants,
    api_keys,
    system_states,
    episodes,
    policies,
    artifacts,
    task_log,
    notifications,
    notification_attempts,
    events,
    event_retention,
    jobs,
    job_queues,
    job_nodes,
    job_cron_slots,
    health_checks,
    telegram_chats,
    telegram_updates,
);
