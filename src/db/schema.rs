//! Table definitions, as `diesel print-schema` writes them from `migrations/`.

diesel::table! {
    users (id) {
        id -> Text,
        name -> Text,
        email -> Text,
        age -> Nullable<Integer>,
        metadata -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    posts (id) {
        id -> Text,
        author_id -> Text,
        title -> Text,
        content -> Text,
        tags -> Text,
        published -> Bool,
        created_at -> Timestamp,
    }
}

diesel::joinable!(posts -> users (author_id));
diesel::allow_tables_to_appear_in_same_query!(users, posts, rooms, messages);

diesel::table! {
    rooms (room_id) {
        room_id -> Text,
        last_offset -> BigInt,
        updated_at -> Timestamp,
        reserved_offset -> BigInt,
    }
}

diesel::table! {
    messages (room_id, room_offset) {
        room_id -> Text,
        room_offset -> BigInt,
        id -> Text,
        kind -> Text,
        sender -> Text,
        content -> Text,
        metadata -> Nullable<Text>,
        created_at -> Timestamp,
        sender_name -> Nullable<Text>,
    }
}

diesel::table! {
    private_messages (id) {
        id -> Text,
        sender -> Text,
        recipient -> Text,
        content -> Text,
        metadata -> Nullable<Text>,
        created_at -> Timestamp,
        sender_name -> Nullable<Text>,
    }
}

diesel::table! {
    shard_map (shard_index) {
        shard_index -> Integer,
        location -> Text,
    }
}

diesel::table! {
    shard_slots (slot) {
        slot -> Integer,
        shard_index -> Integer,
    }
}

diesel::table! {
    shard_deployment (id) {
        id -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    tx_decisions (gid) {
        gid -> Text,
        participants -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    user_emails (email) {
        email -> Text,
        user_id -> Text,
    }
}

diesel::table! {
    sagas (id) {
        id -> Text,
        saga_type -> Text,
        saga_key -> Text,
        state -> Text,
        input -> Text,
        stuck -> Bool,
        owner -> Nullable<Text>,
        lease_until -> Nullable<Timestamp>,
        last_error -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    saga_steps (saga_id, step_index) {
        saga_id -> Text,
        step_index -> Integer,
        name -> Text,
        state -> Text,
        attempts -> Integer,
        compensation_attempts -> Integer,
        output -> Nullable<Text>,
        last_error -> Nullable<Text>,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    user_deletions (user_id) {
        user_id -> Text,
        saga_id -> Text,
        created_at -> Timestamp,
    }
}

diesel::allow_tables_to_appear_in_same_query!(sagas, saga_steps, user_deletions);
